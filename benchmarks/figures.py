"""Every measured number in the README and docs/*.md comes from a committed results file.

    python -m benchmarks.figures [FILE.md ...]      # default: README.md and docs/*.md; exit 1 on a problem

The rules (code, fenced or inline, is never read):

1. **Blocks.** A measured number lives between ``<!-- numbers: PATH[, PATH...] -->`` and
   ``<!-- /numbers -->`` (on lines of their own, or inline, e.g. inside a table cell). PATHs are
   relative to the repository root.
2. **Sources.** Every PATH named exists. A ``.json`` carries ``"provenance"`` with ``date``,
   ``machine`` and ``command`` (``benchmarks/provenance.py`` writes it); a ``.md`` is the report of
   the ``.json`` beside it, which carries it.
3. **Numbers in a block.** Every number in a block is found in a named source: a numeric value in
   a JSON equal to it at the precision shown (``0.061`` matches 0.0608; a percentage also matches
   its fraction, ``48.4%`` 0.4843, and so do F1 ``points``), or the same token in a named ``.md``.
   A number followed by a letter (``3B``, ``v2``), a version (``2.60.1``) and a size ``768x576``
   are not numbers here.
4. **Measured numbers outside blocks.** Outside a block, a number with a unit of measurement
   (``ms``, ``µs``, ``s``, ``minutes``, ``MB``, ``GB``, ``%``, ``x``, ``answers/s``, ``points``,
   ``a second``, ...) is a problem.
5. **Not measured.** A setting, a limit, a target or an input's size written with a unit is
   exempt only where it is listed, as written, in a ``<!-- not measured: 10 s, 1,536 MB (why) -->``
   comment: on a line of its own it covers its paragraph (lines between blank lines; a list is one
   paragraph), inside a line (a table row) that line. Each listed entry must occur there (a stale
   entry is a problem). It exempts from rules 3 and 4.

Numbers without a unit outside blocks (counts, ports, settings) are not checked.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Sources whose numbers are quoted although they carry no provenance; each says why and what to do.
#: Keep it short: a new entry needs a reason a reader accepts.
WITHOUT_PROVENANCE: dict[str, str] = {
    "fmprog/zoo/weights/manifest.json": (
        "written by scripts/train_zoo.py with the training run's seed, steps, seconds, torch and python "
        "but no date or machine; remove this entry once train_zoo.py records provenance()"
    ),
    "benchmarks/tracks/video/verified_report.json": (
        "written by benchmarks/make_video_track.py (make video-track) from the hand-verified sample: a property "
        "of the track, not of a run's machine; remove this entry once make_video_track.py records provenance()"
    ),
}

UNITS = (
    "answers/s|labels/s|calls/s|frames/s|tok/s|requests/s|"
    "F1 points|points|a second|ms|µs|seconds|second|sec|s|minutes|minute|min|hours|hour|h|days|"
    "KB|MB|GB|TB|KiB|MiB|GiB|fps|%"
)
_NUMBER = re.compile(
    r"(?<![\w.])(?<![A-Za-z]-)"  # not inside a word, a version or a name like COCO-80
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?!\.\d|,\d{3})"
    r"(?P<tail>x(?![A-Za-z0-9])|(?:(?:[ \u00a0]|\n[ \t]*)(?:" + UNITS + r")|%)(?![\w/])|(?![A-Za-z0-9]))"
)
_DIMENSION = re.compile(r"\d+x\d+")
_OPEN = re.compile(r"<!--\s*numbers:\s*(?P<paths>.*?)\s*-->", re.S)
_CLOSE = re.compile(r"<!--\s*/numbers\s*-->")
_EXEMPT = re.compile(r"<!--\s*not measured:\s*(?P<items>.*?)\s*-->", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FENCE = re.compile(r"^ {0,3}(?:[-*] +|\d+\. +)?[ ]*(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)  # never across a blank line


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where, what, and the sources of the block it is in."""

    path: str
    line: int
    section: str
    message: str
    sources: tuple[str, ...] = ()
    source: str | None = None  # set when the problem is a source file's

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.section}] {self.message}"


@dataclass
class Token:
    text: str  # the number as written, e.g. "1,646" or "0.061"
    unit: str  # what follows it: "", "%", "x", "ms", ...
    start: int
    span: str = ""  # the range it is part of, as written ("1-2 minutes"), if any

    @property
    def value(self) -> Decimal:
        return Decimal(self.text.replace(",", ""))

    @property
    def decimals(self) -> int:
        return len(self.text.partition(".")[2])

    @property
    def written(self) -> str:
        if not self.unit or self.unit in ("%", "x"):
            return self.text + self.unit
        return f"{self.text} {self.unit}"


@dataclass
class Source:
    """A results file: its numbers (JSON) or text (.md), and what is wrong with it."""

    path: str
    values: list[float] = field(default_factory=list)
    text: str | None = None
    problem: str | None = None

    def has(self, token: Token) -> bool:
        if self.text is not None:
            pattern = r"(?<![\d.,])" + re.escape(token.text) + r"(?![\d]|\.\d|,\d)"
            return re.search(pattern, self.text) is not None
        tolerance = 0.5 * 10.0**-token.decimals * (1 + 1e-9) + 1e-12
        shown = float(token.value)
        scales = (1.0, 100.0) if token.unit in ("%", "points", "F1 points") else (1.0,)
        for scale in scales:
            target = shown / scale
            tol = tolerance / scale
            i = bisect.bisect_left(self.values, target - tol)
            if i < len(self.values) and self.values[i] <= target + tol:
                return True
        return False


def _numbers(data: Any) -> Iterator[float]:
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        yield abs(float(data))
    elif isinstance(data, dict):
        for value in data.values():
            yield from _numbers(value)
    elif isinstance(data, list):
        for value in data:
            yield from _numbers(value)


def _provenance_problem(data: Any) -> str | None:
    provenance = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(provenance, dict):
        return "has no provenance (benchmarks/provenance.py)"
    missing = [key for key in ("date", "machine", "command") if not provenance.get(key)]
    return f"provenance has no {', '.join(missing)}" if missing else None


def load_source(root: Path, name: str) -> Source:
    """Read one named results file and check its provenance."""
    path = root / name
    source = Source(name)
    if not path.is_file():
        source.problem = "does not exist"
        return source
    if path.suffix == ".md":
        source.text = path.read_text(encoding="utf-8")
        beside = path.with_suffix(".json")
        if not beside.is_file():
            source.problem = f"has no {beside.name} beside it to carry its provenance"
            return source
        path = beside
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        source.problem = f"is not JSON: {error}"
        return source
    if source.text is None:
        source.values = sorted(_numbers(data))
    if name not in WITHOUT_PROVENANCE:
        problem = _provenance_problem(data)
        if problem is not None:
            source.problem = problem if path.name == Path(name).name else f"({path.name}) {problem}"
    return source


def without_code(text: str) -> str:
    """The text with fenced code and inline code spans blanked (newlines kept, so offsets hold)."""
    lines = text.split("\n")
    fence: str | None = None
    for i, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * 3
            lines[i] = " " * len(line)
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            lines[i] = " " * len(line)
    text = "\n".join(lines)
    return _INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def tokens(text: str) -> list[Token]:
    """The numbers of a text (code and comments already blanked). The first number of a range
    (``1-4 ms``, ``0.56 to 0.63 s``, ``78-93%``) takes the unit of the second."""
    dimensions = [(m.start(), m.end()) for m in _DIMENSION.finditer(text)]
    found: list[tuple[Token, int]] = []
    for match in _NUMBER.finditer(text):
        if any(start <= match.start() < end for start, end in dimensions):
            continue
        tail = match.group("tail").strip()
        found.append((Token(match.group("num"), tail, match.start()), match.end("num")))
    for (first, end), (second, _) in itertools.pairwise(found):
        if not first.unit and second.unit and text[end : second.start] in ("-", "\u2013", " to "):
            first.unit = second.unit
            first.span = second.span = text[first.start : second.start] + second.written
    return [token for token, _ in found]


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Offsets of runs of non-blank lines."""
    spans, start, offset = [], None, 0
    for line in text.split("\n"):
        if line.strip():
            start = offset if start is None else start
        elif start is not None:
            spans.append((start, offset))
            start = None
        offset += len(line) + 1
    if start is not None:
        spans.append((start, offset))
    return spans


def _headings(text: str, clean: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of every heading outside fenced code (titles as written)."""
    found, offset = [], 0
    for line, cleaned in zip(text.split("\n"), clean.split("\n"), strict=True):
        match = re.match(r"(#{1,6}) +(.*\S)", line)
        if match and cleaned.startswith("#"):
            found.append((offset, len(match.group(1)), match.group(2).strip()))
        offset += len(line) + 1
    return found


def section_at(headings: list[tuple[int, int, str]], offset: int) -> str:
    """The headings above an offset, outermost first but the title: '## Numbers > ### Streams'."""
    trail: list[tuple[int, str]] = []
    for start, level, title in headings:
        if start > offset:
            break
        trail = [(lv, t) for lv, t in trail if lv < level] + [(level, title)]
    return " > ".join("#" * lv + " " + t for lv, t in trail if lv > 1) or "(top)"


def check_text(text: str, name: str, root: Path = ROOT, cache: dict[str, Source] | None = None) -> list[Problem]:
    """Every problem of one Markdown text under the rules above."""
    cache = {} if cache is None else cache
    clean = without_code(text)
    headings = _headings(text, clean)
    line_starts = [0] + [i + 1 for i, c in enumerate(clean) if c == "\n"]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    def problem(offset: int, message: str, **extra: Any) -> Problem:
        return Problem(name, line_of(offset), section_at(headings, offset), message, **extra)

    problems: list[Problem] = []
    # Blocks: an opener, then its closer; no nesting.
    blocks: list[tuple[int, int, tuple[str, ...]]] = []
    markers = sorted(
        [(m.start(), m.end(), "open", m) for m in _OPEN.finditer(clean)]
        + [(m.start(), m.end(), "close", m) for m in _CLOSE.finditer(clean)]
    )
    opened: tuple[int, tuple[str, ...]] | None = None
    for start, end, kind, match in markers:
        if kind == "open":
            if opened is not None:
                problems.append(problem(start, "a numbers block opens inside another (close it first)"))
                continue
            paths = tuple(p.strip() for p in match.group("paths").split(",") if p.strip())
            if not paths:
                problems.append(problem(start, "a numbers block names no results file"))
            opened = (end, paths)
        elif opened is None:
            problems.append(problem(start, "<!-- /numbers --> closes no block"))
        else:
            blocks.append((opened[0], start, opened[1]))
            opened = None
    if opened is not None:
        problems.append(problem(opened[0], "a numbers block is never closed (<!-- /numbers -->)"))

    # Exemptions, per paragraph.
    paragraphs = _paragraphs(clean)
    exempt: dict[tuple[int, int], list[str]] = {}
    for match in _EXEMPT.finditer(clean):
        line_start = clean.rfind("\n", 0, match.start()) + 1
        line_end = clean.find("\n", match.end()) % (len(clean) + 1)
        if clean[line_start : match.start()].strip() or clean[match.end() : line_end].strip():
            span = (line_start, line_end)  # inside a line (a table row): that line
        else:  # on a line of its own: its paragraph
            span = next(((a, b) for a, b in paragraphs if a <= match.start() < b), (line_start, line_end))
        listed = re.sub(r"\s*\([^()]*\)\s*$", "", match.group("items"))  # a closing "(why)" is not an item
        items = [i.strip() for i in re.split(r",\s+(?=\d)|;\s*", listed) if i.strip()]
        exempt.setdefault(span, []).extend(items)

    body = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), clean)
    found = list(tokens(body))

    def is_exempt(token: Token) -> bool:
        names = {token.written, token.text, token.span}
        return any(a <= token.start < b and names & set(items) for (a, b), items in exempt.items())

    for span, items in exempt.items():
        present = {name for t in found if span[0] <= t.start < span[1] for name in (t.written, t.text, t.span)}
        for item in items:
            if item not in present:
                problems.append(problem(span[0], f"'not measured: {item}' names nothing in this paragraph"))

    # Sources of every block, read once.
    for start, _end, paths in blocks:
        for path in paths:
            if path not in cache:
                cache[path] = load_source(root, path)
            if cache[path].problem:
                problems.append(problem(start, f"{path} {cache[path].problem}", sources=paths, source=path))

    for token in found:
        block = next((b for b in blocks if b[0] <= token.start < b[1]), None)
        if is_exempt(token):
            continue
        if block is None:
            if token.unit:
                problems.append(
                    problem(
                        token.start,
                        f"'{token.written}' looks measured but stands outside a numbers block "
                        "(a setting or a target: list it in <!-- not measured: ... -->)",
                    )
                )
            continue
        sources = [cache[p] for p in block[2]]
        if not any(s.has(token) for s in sources if s.values or s.text is not None):
            problems.append(
                problem(token.start, f"'{token.written}' is in none of {', '.join(block[2])}", sources=block[2])
            )
    return problems


def documents(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def check(paths: Iterable[Path] | None = None, root: Path = ROOT) -> list[Problem]:
    """Every problem in the given Markdown files (default: README.md and docs/*.md)."""
    cache: dict[str, Source] = {}
    problems = []
    for path in documents(root) if paths is None else paths:
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        problems += check_text(path.read_text(encoding="utf-8"), name, root, cache)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    problems = check([p.resolve() for p in args.files] or None)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)" if problems else "every measured number has a source", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""``fmprog program run``: one program on one image, with the zoo's backends in this process.

No cluster: the program is compiled, the backends it needs (one per call site) are built from the
backend configuration and loaded here, and the program runs once. Each call site gets the backend
``--backends`` names for it (by site id, or for every site of a function), else the cheapest
backend of its function in the configuration. Every call is recorded with what it answered (the
run is decided call by call, so the trace carries each call's features: the boxes a detector
returned, the text a model answered).

Usage errors exit 2 with one line on stderr: a file that cannot be read, an image that is not PNG
or JPEG, a program the compiler rejects, a configuration that cannot be loaded, an unknown call
site, function or backend, a backend of the wrong function. A backend that cannot be loaded exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmprog.backends.config import BackendCatalog, BackendSpec, Function
from fmprog.program import CallSite, Decider, InvocationContext, Program, Trace


class UsageError(Exception):
    """What the command was given cannot be run; the message says why (exit 2)."""


class FixedChoice(Decider):
    """The decision fixed per call site, asked call by call so that the trace records what each
    call saw and answered (a ``StaticDecider`` runs as the bare mapping, without features)."""

    def __init__(self, decision: Mapping[str, str]):
        self.decision = dict(decision)

    def decide(self, context: InvocationContext) -> str:
        return self.decision[context.site_id]


def parse_backends(text: str | None, program: Program, catalog: BackendCatalog) -> dict[str, str]:
    """The backend of every call site: ``site=backend`` first, then ``function=backend``, then the
    cheapest backend of the site's function. Raises UsageError naming what is wrong."""
    known = {spec.name: spec for spec in catalog.backends}
    sites = {site.id: site for site in program.call_sites}
    by_site: dict[str, str] = {}
    by_function: dict[Function, str] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        key, sep, name = (s.strip() for s in item.partition("="))
        if not sep or not key or not name:
            raise UsageError(f"--backends: {item!r} is not site=backend or function=backend")
        if name not in known:
            raise UsageError(f"--backends: unknown backend {name!r}; the configuration defines {sorted(known)}")
        if key in sites:
            function = sites[key].function
            by_site[key] = name
        elif key in {f.value for f in Function}:
            function = Function(key)
            by_function[function] = name
        else:
            raise UsageError(
                f"--backends: {key!r} is neither a call site of the program {sorted(sites)} "
                f"nor a function {[f.value for f in Function]}"
            )
        if known[name].function != function:
            raise UsageError(
                f"--backends: {name!r} is a {known[name].function.value} backend, {key!r} needs {function.value}"
            )
    decision = {}
    for site in program.call_sites:
        choice = by_site.get(site.id) or by_function.get(site.function) or _cheapest(catalog, site)
        if choice is None:
            raise UsageError(f"call site {site.id} needs a {site.function.value} backend; the configuration has none")
        decision[site.id] = choice
    return decision


def _cheapest(catalog: BackendCatalog, site: CallSite) -> str | None:
    """The cheapest backend of the site's function that can see what it asks (of all of them, when
    none can)."""
    from fmprog.program.scope import usable_backends

    specs = usable_backends(site, catalog.for_function(site.function))
    return min(specs, key=lambda spec: spec.cost).name if specs else None


def warnings(program: Program, catalog: BackendCatalog) -> list[str]:
    """A line for each call site that none of the configuration's backends of its function can see."""
    from fmprog.program.scope import scope_warnings

    return scope_warnings([(site, catalog.for_function(site.function)) for site in program.call_sites])


def load_backends(specs: list[BackendSpec]) -> Any:
    """The named backends, their engines built and loaded in this process."""
    from fmprog.backends.base import Backend, BackendRegistry
    from fmprog.engines import build_engine, local_model

    backends = []
    for spec in specs:
        engine = build_engine(spec)
        engine.load()
        backends.append(Backend(spec, local_model(engine)))
    return BackendRegistry(backends)


def compiled(file: str, source: str) -> Program | None:
    """The program compiled from ``source`` (read from ``file``), or None once each of the
    compiler's problems is printed to stderr, one line each, named by the file."""
    from fmprog.program import ProgramRejected, compile_program

    try:
        return compile_program(source)
    except ProgramRejected as exc:
        for problem in exc.problems:
            print(f"{file}: {problem}", file=sys.stderr)
        return None


def run_program(args: argparse.Namespace) -> int:
    from fmprog.backends.config import ConfigError, load_catalog
    from fmprog.images import ImageError, decode_image
    from fmprog.program import ExecutionLimits, Executor

    try:
        source = _read(args.file).decode()
    except UnicodeDecodeError as exc:
        return _usage(f"cannot read {args.file}: {exc}")
    except UsageError as exc:
        return _usage(str(exc))
    program = compiled(args.file, source)
    if program is None:
        return 2
    try:
        frame = decode_image(_read(args.image))
    except ImageError as exc:
        return _usage(f"{args.image}: {exc}")
    except UsageError as exc:
        return _usage(str(exc))
    if not args.timeout > 0:
        return _usage(f"--timeout must be more than 0 seconds, not {args.timeout}")
    try:
        catalog = load_catalog(args.config)
        decision = parse_backends(args.backends, program, catalog)
    except (ConfigError, UsageError) as exc:
        return _usage(str(exc))

    names = list(dict.fromkeys(decision.values()))
    _progress(f"loading {len(names)} backend{'s' if len(names) != 1 else ''} here: {', '.join(names)} ...")
    started = time.perf_counter()
    try:
        backends = load_backends([catalog.get(name) for name in names])
    except Exception as exc:  # a missing package, weights that do not load: the engine's own error
        print(f"error: cannot load the backends {names}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _progress(f"loaded in {time.perf_counter() - started:.1f} s; running the program ...")
    executor = Executor(backends, ExecutionLimits(timeout_s=args.timeout))
    trace = executor.run(program, frame, FixedChoice(decision))
    report = _report(args, program, frame.shape, decision, catalog, trace)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report))
    return 0 if trace.error is None else 1


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _progress(line: str) -> None:
    """What the command is doing, on stderr (stdout carries the report only)."""
    print(line, file=sys.stderr, flush=True)


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _output(invocation: Any) -> str:
    """What one call answered, in a few words."""
    if invocation.error is not None:
        return f"error: {invocation.error}"
    features = invocation.features
    if features is None:
        return ""
    if features.boxes is not None:
        top = "" if features.top_score is None else f", best score {features.top_score:.2f}"
        return f"{features.boxes} box{'es' if features.boxes != 1 else ''}{top}"
    if features.answer is not None:
        return json.dumps(features.answer)
    return ""


def _report(
    args: argparse.Namespace,
    program: Program,
    shape: tuple[int, ...],
    decision: Mapping[str, str],
    catalog: BackendCatalog,
    trace: Trace,
) -> dict[str, Any]:
    from fmprog.rewards import is_yes

    answer = trace.answer
    report: dict[str, Any] = {
        "program": args.file,
        "image": {"path": args.image, "width": shape[1], "height": shape[0]},
        "kind": args.kind,
        "decision": dict(decision),
        "backends": {name: catalog.get(name).cost for name in dict.fromkeys(decision.values())},
        "answer": answer,
    }
    if args.kind == "binary":
        report["reads_as"] = "yes" if is_yes(answer) else "no"
    report["warnings"] = warnings(program, catalog)
    report["error"] = trace.error.model_dump() if trace.error else None
    report["cost"] = trace.cost
    report["latency_s"] = trace.latency_s
    sites = {site.id: site for site in program.call_sites}
    report["calls"] = [
        {
            "site": i.site,
            "function": i.function.value,
            "line": sites[i.site].line,
            "backend": i.backend,
            "cost": i.cost,
            "latency_s": i.latency_s,
            "ok": i.ok,
            "output": _output(i),
            "out_of_vocabulary": i.out_of_vocabulary,
        }
        for i in trace.invocations
    ]
    report["remembered"] = [hit.model_dump() for hit in trace.memo_hits]
    report["printed"] = trace.output
    return report


def _text(report: dict[str, Any]) -> str:
    image = report["image"]
    lines = [
        f"program  {report['program']}",
        f"image    {image['path']} ({image['width']}x{image['height']})",
        "backends " + ", ".join(f"{site} -> {name}" for site, name in report["decision"].items()),
        f"answer   {json.dumps(report['answer'])}"
        + (f"  (reads as {report['reads_as']})" if "reads_as" in report else ""),
    ]
    lines += [f"warning  {warning}" for warning in report["warnings"]]
    if report["error"]:
        error = report["error"]
        where = f" at line {error['line']}" if error["line"] else ""
        lines.append(f"error    {error['kind']}{where}: {error['message']}")
    calls = report["calls"]
    lines.append(f"cost     {report['cost']:g}  time {report['latency_s'] * 1000:.1f} ms  calls {len(calls)}")
    if calls:
        lines.append("")
        header = f"{'#':>3}  {'site':<24} {'function':<8} {'backend':<14} {'cost':>10} {'ms':>8}  output"
        lines.append(header)
        for n, call in enumerate(calls, 1):
            unseen = f"  [out of vocabulary: {call['out_of_vocabulary']}]" if call["out_of_vocabulary"] else ""
            lines.append(
                f"{n:>3}  {call['site']:<24} {call['function']:<8} {call['backend']:<14} "
                f"{call['cost']:>10g} {call['latency_s'] * 1000:>8.1f}  {call['output']}{unseen}"
            )
    for hit in report["remembered"]:
        lines.append(f"     {hit['site_id']:<24} remembered detection ({hit['backend']}), no call")
    if report["printed"]:
        lines += ["", "printed:", report["printed"].rstrip()]
    return "\n".join(lines)


def add_run_command(commands: Any) -> None:
    """``fmprog program run`` on the ``program`` subcommands."""
    from launcher.options import add_config_option

    run = commands.add_parser(
        "run",
        help="run a program once on one image with the backends built in this process (no cluster); "
        "print the answer and every call",
    )
    run.add_argument("file", help="path to the program's Python source")
    run.add_argument("--image", required=True, help="the frame: a PNG or JPEG file")
    run.add_argument(
        "--backends",
        help="site=backend or function=backend, comma-separated (e.g. vqa=vqa-large,find@5:25=detect-large); "
        "a site left out gets the cheapest backend of its function that can see what it asks",
    )
    run.add_argument("--kind", choices=("binary", "open"), default="open", help="binary also prints yes/no as scored")
    add_config_option(run)
    run.add_argument("--timeout", type=float, default=60.0, help="limit of the run in seconds (default: %(default)s)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(handler=run_program)

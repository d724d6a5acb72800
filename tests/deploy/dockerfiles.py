"""A small Dockerfile reader for the deployment checks: instructions (continuations joined,
comments dropped), stages, and what a stage sets (ENV, EXPOSE, USER). Enough for the files in
deploy/docker, which use no heredocs or parser directives beyond ``# syntax``."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

FLAG = re.compile(r"^--(?P<name>[a-z-]+)(?:=(?P<value>\S*))?\s*")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int
    flags: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.instructions:
            if instruction.keyword == "ENV":
                for word in shlex.split(instruction.args):
                    key, _, value = word.partition("=")
                    values[key] = value
        return values

    def exposed(self) -> set[str]:
        ports = [i.args.split() for i in self.instructions if i.keyword == "EXPOSE"]
        return {port.split("/")[0] for group in ports for port in group}

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


class Dockerfile:
    def __init__(self, path: Path):
        self.path = path
        self.args: dict[str, str] = {}  # ARGs before the first FROM, with their defaults
        self.stages: list[Stage] = []
        for instruction in self._instructions(path.read_text()):
            if instruction.keyword == "FROM":
                words = instruction.args.split()
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                self.stages.append(Stage(self.resolve(words[0]), name))
            elif not self.stages and instruction.keyword == "ARG":
                key, _, value = instruction.args.partition("=")
                self.args[key] = value
            elif self.stages:
                self.stages[-1].instructions.append(instruction)

    @staticmethod
    def _instructions(text: str) -> list[Instruction]:
        out: list[Instruction] = []
        pending: list[str] = []
        start = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue  # comments and blank lines, also inside a continuation
            if not pending:
                start = number
            pending.append(stripped.removesuffix("\\").strip())
            if stripped.endswith("\\"):
                continue
            keyword, _, rest = " ".join(pending).partition(" ")
            flags = []
            while match := FLAG.match(rest):
                flags.append((match["name"], match["value"] or ""))
                rest = rest[match.end() :]
            out.append(Instruction(keyword.upper(), rest.strip(), start, flags))
            pending = []
        return out

    def resolve(self, image: str) -> str:
        """``${NAME}`` of a global ARG replaced by its default."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m[1], m[0]), image)

    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.name]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path.name} has no stage {name!r}")

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        out = [self.stage(name)]
        while out[-1].base in self.stage_names():
            out.append(self.stage(out[-1].base))
        return out

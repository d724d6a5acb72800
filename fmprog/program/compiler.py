"""Validate and compile a program once; run it many times."""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, field
from types import CodeType

from RestrictedPython import compile_restricted_exec

from fmprog.backends.config import Function
from fmprog.backends.functions import routed_methods
from fmprog.program.callsites import CallSite, find_call_sites
from fmprog.program.errors import Problem, ProgramRejected
from fmprog.program.names import name_problems
from fmprog.program.sandbox import PROGRAM_FILENAME, ProgramTransformer

MAX_SOURCE_CHARS = 20_000
_RP_ERROR = re.compile(r"^Line (\d+|None): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class Program:
    """A validated program: its source, its call sites and its compiled code."""

    source: str
    call_sites: tuple[CallSite, ...]
    code: CodeType = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def functions(self) -> frozenset[Function]:
        return frozenset(site.function for site in self.call_sites)

    def site(self, site_id: str) -> CallSite:
        for site in self.call_sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)

    def servable_problem(self) -> Problem | None:
        """Why the program cannot be served, or None: a program that makes no routed call (no
        ``find``, ``exists``, ``query``, ``llm_query``...) gives a backend nothing to answer and a
        policy nothing to decide. It is a valid program to run; the router and ``fmprog program
        check`` refuse it."""
        if self.call_sites:
            return None
        methods = ", ".join(sorted(routed_methods()))
        return Problem(None, f"the program makes no routed call (one of {methods}): nothing to route")


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (``"\\ud800"``: half of a UTF-16 pair, which Python
    strings and JSON escapes allow but Unicode does not), or None: such text has no UTF-8 form, so
    it can be neither parsed as source, stored nor sent as JSON."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def surrogate_escape(char: str) -> str:
    """How a message names a lone surrogate: its escape, ``\\ud800``."""
    return f"\\u{ord(char):04x}"


def compile_program(source: str, *, max_source_chars: int = MAX_SOURCE_CHARS, check_names: bool = True) -> Program:
    """Validate ``source`` and compile it; raise ProgramRejected naming each problem's line.

    ``check_names`` also refuses a call of a name that exists nowhere and a method a patch does not
    have (``fmprog.program.names``); a program accepted before that check existed is compiled
    without it, so that it still runs."""
    if not isinstance(source, str):
        raise ProgramRejected([Problem(None, "program source must be text")])
    if len(source) > max_source_chars:
        raise ProgramRejected([Problem(None, f"program source is {len(source)} characters (limit {max_source_chars})")])
    if "\x00" in source:
        raise ProgramRejected([Problem(None, "program source contains a NUL character")])
    lone = lone_surrogate(source)
    if lone is not None:
        line = source.count("\n", 0, lone) + 1
        message = f"program source holds a lone surrogate ({surrogate_escape(source[lone])}), not a Unicode character"
        raise ProgramRejected([Problem(line, message)])
    try:
        tree = ast.parse(source, PROGRAM_FILENAME)
        sites = tuple(find_call_sites(tree, source))
        result = compile_restricted_exec(source, PROGRAM_FILENAME, policy=ProgramTransformer)
    except SyntaxError as exc:
        raise ProgramRejected([Problem(exc.lineno, f"syntax error: {exc.msg}")]) from None
    except (RecursionError, MemoryError):
        raise ProgramRejected([Problem(None, "program is nested too deeply")]) from None
    problems = [_problem(e) for e in result.errors] + (_name_problems(tree) if check_names else [])
    if problems or result.code is None:
        problems.sort(key=lambda problem: problem.line or 0)
        raise ProgramRejected(problems or [Problem(None, "program did not compile")])
    return Program(source=source, call_sites=sites, code=result.code)


def _name_problems(tree: ast.Module) -> list[Problem]:
    try:
        return name_problems(tree)
    except RecursionError:  # deeper than the check goes (the sandbox took it): its names are checked as it runs
        return []


def _problem(message: str) -> Problem:
    match = _RP_ERROR.match(message)
    if not match:
        return Problem(None, message)
    line = match.group(1)
    return Problem(int(line) if line.isdigit() else None, match.group(2).strip())

"""Errors of the program runtime.

``ProgramRejected`` is raised before anything runs. Everything that stops a running program
derives from ``ProgramHalt``, a ``BaseException``: a program's ``except Exception`` cannot swallow
a timeout, an exhausted budget, a sandbox violation or a failed backend.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class ProgramRejected(ValueError):
    """The source is not an acceptable program; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class InvalidDecision(ValueError):
    """A decision that does not fit the program: a site without a backend, or a wrong backend."""


class ProgramHalt(BaseException):
    """Stops a running program; ``kind`` is the trace's error kind."""

    kind = "halted"


class StepBudgetExceeded(ProgramHalt):
    kind = "step_budget"


class TimeLimitExceeded(ProgramHalt):
    kind = "timeout"


class ResourceLimitExceeded(ProgramHalt):
    """An operation would build a value larger than the run's limits allow."""

    kind = "resource_limit"


class SandboxViolation(ProgramHalt):
    """The program reached for something outside the program API."""

    kind = "sandbox_violation"


class UnsupportedFunction(ProgramHalt):
    kind = "unsupported"


class InvalidChoice(ProgramHalt):
    """A decider asked while the program runs failed, or named a backend the call site may not use
    (unknown, of another function, or not among the site's candidates)."""

    kind = "invalid_decision"


class InvalidAnswer(ProgramHalt):
    """The program returned what cannot be an answer: text that is not Unicode (a lone surrogate)."""

    kind = "runtime_error"


class BackendFailure(ProgramHalt):
    """A backend raised, or answered with something malformed."""

    kind = "backend_error"

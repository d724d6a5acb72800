"""The router's domain errors. Each says what went wrong in the paper's terms; the HTTP layer maps
them to status codes (``NotFound`` 404, ``Conflict`` 409, the rest 422) without knowing more."""

from __future__ import annotations

from fmprog.program import Problem


class RouterError(Exception):
    """Base of every error the router's domain code raises on purpose."""


class NotFound(RouterError):
    """No program or decision with that id."""


class Conflict(RouterError):
    """The request contradicts what is already stored, e.g. a second, different label for a decision."""


class ProgramInvalid(RouterError):
    """The program source was rejected by the runtime; ``problems`` name each line and reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("program rejected: " + "; ".join(str(p) for p in problems))


class SynthesisUnavailable(RouterError):
    """A program was asked for by natural-language query, which needs synthesis (issue 6)."""


class BackendsRejected(RouterError):
    """The allowed backends name an unknown backend, a backend of the wrong function, or leave a
    call site's function with no backend at all."""


class PolicyInvalid(RouterError):
    """The policy asked for (algorithm, hyper-parameters) cannot be built for this program."""


class DecisionRejected(RouterError):
    """A decision that does not fit the program: a missing site, or a backend that is not a candidate."""


class FrameRejected(RouterError):
    """The frame is not an ``H x W x 3`` uint8 image."""


class LabelRejected(RouterError):
    """A label the task's reward scheme cannot read (a binary label that is not yes or no)."""

"""The router's domain errors. Each says what went wrong in the paper's terms; the HTTP layer maps
them to status codes (``NotFound`` 404, ``Conflict`` 409, ``Expired`` 410, ``BudgetExhausted`` and
``QuotaExceeded`` 429, ``Unavailable`` 503, the rest 422) without knowing more. An error with a
``retry_after_s`` says when trying again makes sense (the HTTP layer's ``Retry-After``)."""

from __future__ import annotations

from fmprog.program import Problem


class RouterError(Exception):
    """Base of every error the router's domain code raises on purpose."""


class NotFound(RouterError):
    """No program or decision with that id."""


class Conflict(RouterError):
    """The request contradicts what is already stored, e.g. a second, different label for a decision."""


class BudgetExhausted(RouterError):
    """The program spent its budget for the window and refuses frames until it ends."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class QuotaExceeded(RouterError):
    """The tenant is past one of its quotas (frames in flight, frames a second, stored bytes,
    streams): this request is refused; the tenant's others go on."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class Expired(RouterError):
    """The decision's label window closed before its label came: the label is refused, not learned."""

    def __init__(self, message: str, program_id: str):
        self.program_id = program_id
        super().__init__(message)


class ProgramInvalid(RouterError):
    """The program source was rejected by the runtime; ``problems`` name each line and reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("program rejected: " + "; ".join(str(p) for p in problems))


class Unavailable(RouterError):
    """Something the request needs is down: the synthesizer's model cannot be loaded or reached, or
    the backends failed during a synthesised program's dry run. Trying again later may succeed."""


class Overloaded(Unavailable):
    """The router's own queue of frames waiting to run is full: refused at once rather than kept
    waiting without bound."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class BackendsUnavailable(Unavailable):
    """Every backend a frame's program needed was unreachable (the Serve proxy gone, or every
    replica of a function): the frame was recorded as a ``backend_error`` but not answered."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class SynthesisUnavailable(RouterError):
    """A program was asked for by query, but this router has no synthesizer configured."""


class SynthesisFailed(RouterError):
    """No program the synthesizer wrote for a query passed validation and the dry run within the
    allowed attempts; the message names the last error."""

    def __init__(self, query: str, attempts: int, last_error: str):
        self.query = query
        self.attempts = attempts
        self.last_error = last_error
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"could not synthesise a program for {query!r} in {tries}; last error: {last_error}")


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


class EvaluationRejected(RouterError):
    """A target the logged decisions cannot support: another ``lambda`` where the decisions were not
    gated, a backend that is not a candidate, a call site the program does not have."""


class SourceRejected(RouterError):
    """A stream's source this router will not read: an unknown scheme, or a file outside the
    directories it allows."""


class UnsupportedMedia(RouterError):
    """A request body of a content type the route does not read."""

"""Wire types of the router: what crosses its boundary (clients, the store, the policy).

Families follow the usual split: ``ProgramCreate`` in (a program's source, or a task in words to
synthesise one from), ``ProgramPublic`` out (with ``SynthesisPublic`` when it was synthesised);
``FrameResult`` for one answered frame (stored as ``FrameRecord``); ``FeedbackIn`` and
``FeedbackResult`` for a label and the reward it earned (stored as ``FeedbackRecord``). What the
router and the policy send each other is :mod:`fmprog.contract`.
The cost weight is called ``lambda`` on the wire (the paper's name) and ``lambda_`` in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, JsonValue, StringConstraints, model_validator

from fmprog.backends.config import BackendName, Function
from fmprog.contract import PolicyDecision
from fmprog.off_policy import DRAWS, MAX_RUNS, Evaluation, Target
from fmprog.program import CallSite, Invocation
from fmprog.program.scope import warning_line
from fmprog.rewards import TaskKind
from router.tenants import DEFAULT_TENANT

DecisionStatus = Literal["pending", "answered", "resolved", "expired"]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
ProgramName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9 ._-]+$")
]
"""A program's name for people: 1 to 100 letters, digits, spaces, dots, underscores and hyphens."""


def _is_none(value: object) -> bool:
    return value is None


_WIRE = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


MAX_FEEDBACK_BATCH = 1000
"""The most labels one ``POST /feedback`` list may carry."""


class LabelBudget(BaseModel):
    """How many of a program's frames an operator can label: a ``fraction`` of the frames
    answered, or a number ``per_hour``. The router asks for those labels (``label_requested``) on
    the frames whose label the policy values most."""

    model_config = _WIRE

    fraction: float | None = Field(default=None, gt=0, le=1, description="Share of the frames answered.")
    per_hour: float | None = Field(
        default=None, gt=0, le=1e9, allow_inf_nan=False, description="Labels per hour (per router)."
    )

    @model_validator(mode="after")
    def _one(self) -> LabelBudget:
        if (self.fraction is None) == (self.per_hour is None):
            raise ValueError("a label budget gives exactly one of 'fraction' or 'per_hour'")
        return self


class Teacher(BaseModel):
    """A dearer configuration of the program that labels a share of its frames itself: the router
    runs it on ``fraction`` of the frames, picked at random (``pick: random``) or those the policy
    doubts most (``doubt``: the most useful labels, and the dearest teacher runs, since they are
    the frames where the program found something to ask about), and takes its answer as the label.
    ``backends``: ``"largest"`` (every call site's dearest candidate) or a backend per function
    (the others' dearest candidates)."""

    model_config = _WIRE

    fraction: float = Field(gt=0, le=1, description="Share of the frames answered that the teacher labels.")
    pick: Literal["random", "doubt"] = Field(
        default="random", description="Which frames: a random share, or those the policy doubts most."
    )
    backends: Literal["largest"] | dict[Function, BackendName] = Field(
        default="largest", description='"largest", or a backend per function (the rest: their dearest).'
    )


class CostBudget(BaseModel):
    """What a program may spend per window (an hour or a day, UTC), in cost units, and what
    happens to its frames once it has: answered with the cheapest candidates without asking the
    policy (``degrade``), or refused with 429 until the window ends (``refuse``)."""

    model_config = _WIRE

    cost: float = Field(gt=0, le=1e18, allow_inf_nan=False, description="Cost units per window.")
    window: Literal["hour", "day"] = "hour"
    exhausted: Literal["degrade", "refuse"] = Field(
        default="degrade", description="Once spent: the cheapest backends (degrade), or 429 (refuse)."
    )


class BudgetState(BaseModel):
    """Where a program's budget stands in the current window."""

    model_config = _WIRE

    window_start: datetime
    window_end: datetime
    spent: float = Field(description="Cost units charged in this window (answers and teacher runs).")
    remaining: float = Field(description="What is left of the budget (0 once spent).")


class ProgramCreate(BaseModel):
    """A task to register: its program (``source``) or a question to synthesise one from (``query``)."""

    model_config = _WIRE

    source: str | None = Field(default=None, description="Program source defining execute_command(image).")
    query: Query | None = Field(
        default=None, description="A task in words; the router synthesises its program (at most 1000 characters)."
    )
    kind: TaskKind = Field(description="binary (yes/no, F1 on rare positives) or open (free-form answers).")
    name: ProgramName | None = Field(
        default=None,
        description="A name for people (1 to 100 letters, digits, spaces and . _ -): in every read of the program "
        "and in the fmprog_program_info metric.",
    )
    lambda_: float | None = Field(
        default=None,
        alias="lambda",
        ge=0,
        allow_inf_nan=False,
        description="Weight of cost in the reward; left out: the router's default_lambda.",
    )
    algorithm: str = Field(default="structured", min_length=1, max_length=64, description="Policy algorithm name.")
    hyperparameters: dict[str, JsonValue] = Field(
        default_factory=dict, description="The algorithm's hyper-parameters; unknown keys are refused."
    )
    backends: dict[Function, list[BackendName]] | None = Field(
        default=None,
        description="Allowed backends per function; a function left out may use all of its backends in the catalog.",
    )
    labels: LabelBudget | None = Field(
        default=None, description="The labels an operator can afford; none: every frame's label is asked for."
    )
    teacher: Teacher | None = Field(default=None, description="A configuration that labels a share of frames.")
    budget: CostBudget | None = Field(default=None, description="What the program may spend per hour or day.")

    @model_validator(mode="after")
    def _source_xor_query(self) -> ProgramCreate:
        if (self.source is None) == (self.query is None):
            raise ValueError("give exactly one of 'source' (a program) or 'query' (a task to synthesise)")
        return self


class CandidateBackend(BaseModel):
    """A backend the policy may choose at a call site, with its cost per invocation."""

    model_config = _WIRE

    name: str
    cost: float


class CallSitePublic(CallSite):
    """A routed call of the program (the runtime's CallSite) and the backends the policy may choose for it."""

    model_config = _WIRE

    candidates: list[CandidateBackend] = Field(min_length=1)
    out_of_vocabulary: dict[str, str] = Field(
        default_factory=dict,
        description="When no candidate's vocabulary covers what this site asks (its literal noun or question): "
        "each candidate with why. Empty otherwise (candidates that cannot see it are left out of the site's "
        "candidates when others can).",
    )

    @property
    def warning(self) -> str | None:
        """One line naming what no candidate can see, or None."""
        return warning_line(self, self.out_of_vocabulary) if self.out_of_vocabulary else None


def site_warnings(sites: Sequence[CallSitePublic]) -> list[str]:
    """A line per call site no candidate can see."""
    return [warning for site in sites if (warning := site.warning) is not None]


def program_warnings(sites: Sequence[CallSitePublic], synthesis: SynthesisPublic | None) -> list[str]:
    """A program's warnings: a line per call site no candidate can see, then what its synthesis was
    unsure of (each line once)."""
    warnings = site_warnings(sites)
    return warnings + [w for w in (synthesis.warnings if synthesis else []) if w not in warnings]


class SynthesisPublic(BaseModel):
    """How a program was synthesised from its query: the attempts it took (1 when the model's first
    program passed validation and the dry run), the time it took, whether it came from the cache
    (then ``attempts`` and ``latency_s`` are those of the original synthesis), and why the refused
    attempts were refused."""

    model_config = _WIRE

    attempts: int = Field(ge=1)
    latency_s: float = Field(ge=0, description="Wall-clock time of this registration's synthesis (0 when cached).")
    cached: bool
    errors: list[str] = Field(default_factory=list, description="Why each refused attempt was refused, in order.")
    dry_run_frames: int = Field(
        ge=0, description="Generated frames the accepted program ran on before registration (0 when cached)."
    )
    unreached_sites: list[str] = Field(
        default_factory=list,
        description="Call sites of the program that no dry-run frame reached: code that has never run.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the checks could not settle, a line each: a call site no dry-run frame reached, an answer "
        "that was the same on every dry-run frame, a noun or question outside every candidate's vocabulary (for a "
        "cached program: its original dry run's, and the vocabularies of this registration's candidates).",
    )
    synthesizer: str = Field(description="The model that wrote the program.")
    api_version: str = Field(description="Version (hash) of the synthesis prompt and the API it documents.")


class CachedProgram(BaseModel):
    """A program synthesised before for the same task, prompt and model (storage, not wire)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    attempts: int
    latency_s: float
    created_at: datetime
    warnings: list[str] = Field(default_factory=list, description="What its dry run was unsure of.")


class ProgramPublic(BaseModel):
    """A registered program as the router stores and returns it."""

    model_config = _WIRE

    id: Id
    name: str | None = Field(default=None, description="Its name for people, if it was registered with one.")
    source: str
    kind: TaskKind
    lambda_: float = Field(alias="lambda")
    lambda_source: Literal["request", "default"] = Field(
        default="request",
        description="Where lambda came from: the registration (request) or the router's default_lambda (default).",
    )
    algorithm: str
    hyperparameters: dict[str, JsonValue] = Field(default_factory=dict)
    call_sites: list[CallSitePublic]
    created_at: datetime
    digest: str = Field(description="sha256 of the source.")
    query: str | None = Field(default=None, description="The task in words, when the program was synthesised.")
    synthesis: SynthesisPublic | None = Field(default=None, description="How it was synthesised; None for source.")
    labels: LabelBudget | None = Field(default=None, description="The label budget; none: every label is asked for.")
    teacher: Teacher | None = Field(default=None, description="The teacher that labels a share of frames, if any.")
    budget: CostBudget | None = Field(default=None, description="Its cost budget per window, if any.")
    tenant: str = Field(
        default=DEFAULT_TENANT,
        description="The tenant that registered it (its API key's); only that tenant's keys and admin keys see it.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Each call site that none of its backends can see (a noun or question outside every "
        "candidate's vocabulary): it is answered as well as the backends can, and its calls are marked "
        "out_of_vocabulary in the trace. Then, for a synthesised program, what its synthesis was unsure of "
        "(synthesis.warnings).",
    )
    spending: BudgetState | None = Field(
        default=None, description="Where its budget stands in the current window (GET /programs/{id})."
    )


class ProgramStopped(BaseModel):
    """Why a run stopped before answering (the runtime's error kind, message and program line)."""

    model_config = _WIRE

    kind: str
    message: str
    line: int | None = None


class FrameResult(BaseModel):
    """What one frame got (the reply to ``POST /answer``): the program's answer, the decision it ran
    under (a backend per call site; ``decision_id`` names it, and the frame's record with it), the
    trace and what it cost."""

    model_config = _WIRE

    decision_id: Id
    program_id: Id
    frame_id: str | None = None
    answer: JsonValue = None
    decision: dict[str, str] = Field(description="The backend chosen for every call site.")
    fallback: bool = Field(description="True when the decision was the configured fallback, not the policy's.")
    trace: list[Invocation]
    cost: float
    latency_s: float
    error: ProgramStopped | None = None
    label_requested: bool = Field(
        default=True, description="Whether a label for this frame is wanted (within the program's label budget)."
    )
    teacher: bool = Field(default=False, description="Whether the program's teacher labels this frame.")
    propensity: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The probability the decision gave this run (1 for the fallback; from the gates' spreads for "
        "a gated decision); None when the decision carries no propensities.",
    )
    reused: bool = Field(
        default=False,
        description="True when the frame barely differed from the camera's last frame that ran the program, and "
        "that frame's answer was reused (``reused_from``) instead of running the program: cost 0.",
    )
    reused_from: Id | None = Field(default=None, description="The decision whose answer was reused.")


class AnswerItem(BaseModel):
    """One frame of a batch: its answer, or why it was not answered (the status a single frame
    would have got, and the reason)."""

    model_config = _WIRE

    frame_id: str | None = None
    result: FrameResult | None = None
    status: int = Field(default=200, description="200, or the HTTP status this frame alone would have got.")
    detail: str | None = None


class FrameBatch(BaseModel):
    """What each frame of a batch (a multipart upload of several images) got, in their order."""

    model_config = _WIRE

    results: list[AnswerItem]


class FeedbackIn(BaseModel):
    """The ground-truth label for an answered frame."""

    model_config = _WIRE

    decision_id: Id
    label: Label


LabelSource = Literal["client", "teacher"]
FeedbackOutcome = Literal["accepted", "repeat", "conflict", "unknown", "expired", "rejected"]


class FeedbackResult(BaseModel):
    """The task reward a label earned, with the credit the policy needs: which sites ran and their cost."""

    model_config = _WIRE

    decision_id: Id
    program_id: Id
    label: str
    reward: float = Field(description="Task reward (the negated loss), before any cost term.")
    executed_sites: list[str]
    site_costs: dict[str, float] = Field(description="Cost charged to each executed site.")
    cost: float
    repeat: bool = Field(description="True when this label had already been received for the decision.")
    source: LabelSource = Field(default="client", description="Who gave the label: a client, or the teacher.")


class FeedbackItem(BaseModel):
    """What became of one label of a list: ``accepted`` (new), ``repeat``, ``conflict`` (the
    decision has another label), ``unknown`` (no such decision), ``expired`` (its label window
    closed) or ``rejected`` (a label the task cannot read); ``feedback`` for the first two."""

    model_config = _WIRE

    decision_id: str
    outcome: FeedbackOutcome
    detail: str | None = None
    feedback: FeedbackResult | None = None


class FeedbackBatch(BaseModel):
    """One outcome per label of a list, in its order."""

    model_config = _WIRE

    results: list[FeedbackItem]


class ReuseRecord(BaseModel):
    """What the reuse gate decided for a frame of a camera (a stream, or ``POST /answer`` naming a
    ``camera``): the features it saw (the frame's difference from the camera's last frame that ran
    the program, its age), whether it reused that frame's answer, the probability it gave that
    choice and its estimate that the answer had changed (storage and the off-policy log)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: str
    reused: bool
    reused_from: Id | None = None
    features: dict[str, float]
    propensity: float = Field(ge=0, le=1)
    p_change: float = Field(ge=0, le=1)
    reason: str = Field(description="unchanged (reused), changed, explore, max_age or first.")


class FrameRecord(BaseModel):
    """The stored record of one frame: its decision (``id`` is the decision id; a backend per call
    site, and whether it was the fallback), what ran, what it cost and the program's answer
    (storage, not wire; the ``decisions`` table, one row per frame's decision)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    program_id: Id
    kind: TaskKind
    frame_id: str | None
    decision: dict[str, str]
    fallback: bool
    answer: JsonValue
    error: ProgramStopped | None
    trace: list[Invocation]
    executed_sites: list[str]
    site_costs: dict[str, float]
    cost: float
    latency_s: float
    status: DecisionStatus
    created_at: datetime
    propensity: float | None = None
    policy_decision: PolicyDecision | None = None  # the policy's decision, with its propensities and gates
    reuse: ReuseRecord | None = None  # what the reuse gate decided, for a frame of a camera


class TeacherRun(BaseModel):
    """The teacher's run that gave a label: its decision, what it answered, cost and trace
    (storage, and the ``teacher`` of a stored label)."""

    model_config = _WIRE

    decision: dict[str, str]
    answer: JsonValue
    cost: float
    trace: list[Invocation]


class FeedbackRecord(BaseModel):
    """A stored label and the reward it earned (storage, not wire)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: Id
    label: str
    reward: float
    created_at: datetime
    source: LabelSource = "client"
    teacher: TeacherRun | None = None


class DeadLetter(BaseModel):
    """A message for the policy that the policy refused (a 4xx: resending it cannot help), kept for
    an operator: what it was, for which program, the policy's reason and when."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: Literal["register", "feedback", "delete", "expire"]
    program_id: str
    payload: JsonValue = Field(description="The message as it was queued (a policy spec, a feedback, or {}).")
    reason: str = Field(description="The policy's reply.")
    attempts: int = Field(description="Failed delivery attempts before the policy refused it.")
    created_at: datetime


MAX_TARGETS = 16
"""The most targets one evaluation estimates."""


class EvaluationRequest(BaseModel):
    """Policies to estimate on a program's logged decisions (off-policy evaluation, ``fmprog.off_policy``)."""

    model_config = _WIRE

    targets: list[Target] = Field(
        min_length=1,
        max_length=MAX_TARGETS,
        description='Each {"kind": "static", "backends": "largest" | "cheapest" | {site or function: backend}}, '
        '{"kind": "random"} or {"kind": "lambda", "lambda": X} (decisions with gates or score spreads only: '
        "cascade, structured, structured_code).",
    )
    last: int = Field(
        default=10_000, ge=1, le=MAX_RUNS, description="Read the program's last this many labelled decisions."
    )
    draws: int = Field(
        default=DRAWS,
        ge=256,
        le=65_536,
        description="Samples of the scores of a gate that decided several calls, its part of a run's probability "
        "is estimated from.",
    )


class EvaluationReport(BaseModel):
    """What each target would have cost and scored on the program's labelled decisions, estimated from the log."""

    model_config = _WIRE

    program_id: Id
    algorithm: str = Field(description="The logging policy's algorithm.")
    lambda_: float = Field(alias="lambda", description="The program's lambda: the logging policy's.")
    decisions: int = Field(ge=0, description="Labelled decisions read (at most last), newest first.")
    labelled: int = Field(ge=0, description="Of them, the policy's: the runs the estimates read.")
    fallbacks: int = Field(
        ge=0, description="Of them, the router's fallback decisions, made without the policy (left out)."
    )
    reused: int = Field(
        default=0,
        ge=0,
        description="Of them, cameras' frames answered by reusing the last answer: the reuse gate's decisions, "
        "not the backends' (left out).",
    )
    evaluations: list[Evaluation] = Field(description="One per target, in the order asked.")


# -- streams ------------------------------------------------------------------------------------------

StreamState = Literal["running", "stopped", "ended"]
Camera = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]


class StreamCreate(BaseModel):
    """A stream to start: where its frames come from and how often to answer one."""

    model_config = _WIRE

    source: str = Field(
        min_length=1,
        max_length=2000,
        description="rtsp:// (a camera), http(s):// (an MJPEG camera or a video file) or file:// (a path under a "
        "directory the router allows).",
    )
    fps: float = Field(default=5.0, gt=0, le=60, allow_inf_nan=False, description="Frames answered per second.")
    reuse: bool = Field(
        default=True, description="Reuse the last answer for a frame that barely differs from the last one that ran."
    )
    max_age: int = Field(
        default=10, ge=1, le=10_000, description="A frame this many frames after the last run runs the program."
    )
    webhook: HttpUrl | None = Field(
        default=None,
        description="Each event is also POSTed here as JSON (retried; one never acknowledged is kept as a dead "
        "letter: GET /streams/{id}/dead-letters).",
    )


class StreamCounters(BaseModel):
    """What a stream has done so far."""

    model_config = _WIRE

    received: int = Field(default=0, description="Frames sampled from the source.")
    answered: int = Field(default=0, description="Frames answered, reused ones included.")
    reused: int = Field(default=0, description="Frames answered by reusing the last answer.")
    dropped: int = Field(default=0, description="Frames replaced by a newer one before they were answered.")
    failed: int = Field(default=0, description="Frames that could not be answered (the error is logged).")
    reconnects: int = Field(default=0, description="Times the source was reconnected.")
    cost: float = Field(default=0.0, description="What the answered frames cost.")
    saved_cost: float = Field(default=0.0, description="What the reused frames would have cost (their last run's).")
    lag_s: float | None = Field(default=None, description="The last answer's delay after its frame arrived.")
    last_pts: float = Field(default=0.0, description="Seconds into the source of the next frame to read.")
    webhook_seq: int = Field(default=0, description="The last event the webhook acknowledged or dead-lettered.")
    webhook_failed: int = Field(default=0, description="Events kept as dead letters after the webhook's retries.")


class StreamPublic(BaseModel):
    """A stream: its source, state, owner (the router reading it) and counters."""

    model_config = _WIRE

    id: Id
    program_id: Id
    source: str
    fps: float
    reuse: bool
    max_age: int
    webhook: str | None = None
    state: StreamState
    owner: str | None = Field(default=None, description="The router that reads the stream now.")
    tenant: str = Field(default=DEFAULT_TENANT, description="Its program's tenant: only that tenant's keys see it.")
    counters: StreamCounters
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime


class StreamDeadLetter(BaseModel):
    """An event a stream's webhook refused (a 4xx) or never acknowledged after every retry."""

    model_config = _WIRE

    seq: int
    url: str
    reason: str
    attempts: int
    created_at: datetime


class StreamEvent(BaseModel):
    """One answered frame of a stream (a ``data:`` line of its event stream, ``id:`` its ``seq``)."""

    model_config = _WIRE

    seq: int = Field(ge=1, description="The event's number in the stream, from 1 (the SSE id).")
    stream_id: Id
    frame: int = Field(description="The frame's index at the stream's rate (seconds into the source times fps).")
    pts: float = Field(description="Seconds into the source.")
    answer: JsonValue = None
    decision_id: Id
    cost: float
    reused: bool
    error: ProgramStopped | None = None
    lag_s: float = Field(description="Seconds from the frame's arrival to its answer.")
    created_at: datetime

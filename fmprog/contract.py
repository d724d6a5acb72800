"""The contract between the router and the policy: what one sends the other.

Both services import this module and nothing of each other. Names follow the paper: a *program*
has routed *call sites*; each site's function has candidate *backends* with a *cost* (millions of
parameters); a *decision* assigns a backend to every site for one frame; *feedback* brings back the
task reward (or the 0/1 loss), the sites that actually executed and what each cost. ``lambda``
weighs cost against the task term: ``R = -L - lambda * C`` (paper), sub-reward
``r_i = -lambda * C_i - L / N``.

- :class:`PolicySpec` (call sites with their candidate backends and costs, ``lambda``, the
  algorithm's name, its hyper-parameters as a dict, a seed): what a policy is built from. Only its
  shape is checked here; whether the algorithm exists and takes those hyper-parameters is the
  policy service's to say (``POST /policies/check``).
- :class:`PolicyDecision`: the policy's reply for one frame: a backend per call site, the scores
  and the propensities of every backend (every algorithm); optionally, per call site, *gates*
  (:class:`SiteGate`) the router evaluates at each invocation instead of the fixed backend.
- :class:`Feedback`: what the router sends back for one decision, optionally with one
  :class:`InvocationRecord` per gated invocation; :class:`FeedbackList`: several of them in one
  request, answered per item (:class:`FeedbackListReply`); :class:`ExpiredDecisions`: decisions
  whose label never came, to forget.
- :class:`FrameInput` and :func:`frame_input`: what of a frame the router sends with a request
  for a decision, by algorithm, the one place that says which pixels each algorithm reads:
  nothing (``"none"``: ``cascade``, ``static``, ``random``, ``ucb1``; the request has an empty
  body), a ``THUMBNAIL_SIDE`` x ``THUMBNAIL_SIDE`` nearest-pixel thumbnail (``"thumbnail"``:
  ``fast``, ``unstructured``, ``whole_query``, whose fixed features read only those pixels; made
  by ``fmprog.images.thumbnail`` and sent as PNG), or the frame as received (``"full"``:
  ``structured`` and ``structured_code``, which resize the whole frame themselves, and any
  algorithm not in the table). An algorithm that reads no pixels decides the same with or
  without the frame; one that reads the thumbnail decides the same on it as on the frame.
- Gate features: ``CONTEXT_FEATURES`` and ``ESCALATION_FEATURES`` name the values of the vectors a
  gate scores (computed by ``fmprog.program.deciders.context_vector`` / ``escalation_vector``).
- Rewards are not part of it: how an answer is scored is :mod:`fmprog.rewards`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from fmprog.backends.config import BackendName, Function

# -- the policy's specification ---------------------------------------------------------------------


class BackendOption(BaseModel):
    """One candidate backend of a call site and its cost per invocation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: BackendName
    cost: float = Field(gt=0, allow_inf_nan=False, description="Cost of one invocation, in the configuration's unit.")


class CallSiteSpec(BaseModel):
    """A routed call site of the program with the backends the policy may choose from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, description='Site id, e.g. "find@3:23".')
    function: Function
    backends: list[BackendOption] = Field(min_length=1, max_length=64)

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, backends: list[BackendOption]) -> list[BackendOption]:
        names = [b.name for b in backends]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"backend {duplicated[0]!r} is listed twice")
        return backends

    @property
    def backend_names(self) -> list[str]:
        return [b.name for b in self.backends]

    @property
    def costs(self) -> list[float]:
        return [b.cost for b in self.backends]

    @property
    def cheapest(self) -> str:
        return min(self.backends, key=lambda b: b.cost).name

    @property
    def largest(self) -> str:
        return max(self.backends, key=lambda b: b.cost).name


MAX_COST_TERM = 1e12
"""The largest ``lambda * cost`` of one invocation a policy accepts: beyond it the task term (about
1 to 1000) is lost in floating point and the policy's scores stop meaning anything."""


class PolicySpec(BaseModel):
    """What a policy is built from: the program's call sites, ``lambda``, algorithm, hyper-parameters, seed.

    Validated for its shape only (unique sites and backends, positive costs, ``lambda >= 0`` and
    ``lambda`` times the largest candidate cost finite and at most ``MAX_COST_TERM``, so the cost
    term neither overflows nor drowns the task term). The algorithm's name and ``hyperparameters``
    are the policy's to check (its ``Params`` model refuses unknown keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    sites: list[CallSiteSpec] = Field(min_length=1, max_length=256)
    lam: float = Field(default=0.0, alias="lambda", ge=0, allow_inf_nan=False, description="Cost weight.")
    algorithm: str = Field(default="structured", min_length=1, max_length=64)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=42, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _unique_sites(self) -> PolicySpec:
        ids = [s.id for s in self.sites]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"call site {duplicated[0]!r} is listed twice")
        return self

    @model_validator(mode="after")
    def _usable_cost_term(self) -> PolicySpec:
        site, backend = max(((s, b) for s in self.sites for b in s.backends), key=lambda pair: pair[1].cost)
        term = self.lam * backend.cost
        if not math.isfinite(term) or term > MAX_COST_TERM:
            raise ValueError(
                f"lambda {self.lam:g} times the largest candidate cost {backend.cost:g} ({backend.name!r} at call "
                f"site {site.id!r}) is {term:g}, above {MAX_COST_TERM:g}: the cost term would overflow or drown "
                "the task reward; choose a smaller lambda"
            )
        return self

    def site(self, site_id: str) -> CallSiteSpec:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)


# -- what the policy reads of a frame ---------------------------------------------------------------

THUMBNAIL_SIDE = 32
"""The side of the thumbnail sent to the algorithms that read one (``policy.features`` computes
its features on exactly these pixels)."""


class FrameInput(BaseModel):
    """What of a frame an algorithm reads: no pixels (``"none"``), the nearest-pixel thumbnail of
    ``side`` x ``side`` pixels (``"thumbnail"``, ``fmprog.images.thumbnail``), or the whole frame
    (``"full"``). ``side`` is 0 except for a thumbnail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixels: Literal["none", "thumbnail", "full"]
    side: int = Field(default=0, ge=0, le=4096)

    @model_validator(mode="after")
    def _side(self) -> FrameInput:
        if (self.pixels == "thumbnail") != (self.side > 0):
            raise ValueError("a thumbnail needs its side (at least 1); no other frame input has one")
        return self


_NO_PIXELS = FrameInput(pixels="none")
_FEATURE_THUMBNAIL = FrameInput(pixels="thumbnail", side=THUMBNAIL_SIDE)
_FULL_FRAME = FrameInput(pixels="full")

FRAME_INPUTS: dict[str, FrameInput] = {
    "cascade": _NO_PIXELS,  # gates over the invocation's context, not the frame
    "static": _NO_PIXELS,
    "random": _NO_PIXELS,
    "ucb1": _NO_PIXELS,
    "fast": _FEATURE_THUMBNAIL,  # policy.features: fixed statistics of the thumbnail
    "unstructured": _FEATURE_THUMBNAIL,
    "whole_query": _FEATURE_THUMBNAIL,
    "structured": _FULL_FRAME,  # area-averaged to its input size, as floats
    "structured_code": _FULL_FRAME,  # resized (bilinear, antialiased) to its input size
}
"""What each algorithm reads of a frame, by name; read through :func:`frame_input`."""


def frame_input(spec: PolicySpec) -> FrameInput:
    """What of each frame the router sends the policy built from ``spec``: what its algorithm
    reads; the whole frame for an algorithm not in ``FRAME_INPUTS`` (the safe default)."""
    return FRAME_INPUTS.get(spec.algorithm, _FULL_FRAME)


# -- gates: deciding each call when it runs -------------------------------------------------------

CONTEXT_FEATURES: tuple[str, ...] = (
    "bias",  # 1
    "patch",  # 1 when the call acts on a patch (not a text-only call)
    "area",  # the patch's share of the frame (0 without one)
    "found",  # 1 when a detector found the patch (its box has a score)
    "score",  # that detector score (0 without one)
    "call",  # the call's position in the run, min(index, 32) / 32
    "site_calls",  # this site's earlier calls in the run, min(n, 8) / 8
    "sites_left",  # call sites not run yet, min(n, 8) / 8
    "detected",  # 1 when an earlier detection in the run returned a box
    "top_score",  # the best box score of the run's earlier detections (0 without one)
    "said_yes",  # 1 when an earlier VQA/LLM/OCR answer of the run said yes
    "said_no",  # 1 when an earlier VQA/LLM/OCR answer of the run said no
)
"""The values of an invocation's context a gate's first choice scores, in order (each in 0..1)."""

ESCALATION_FEATURES: tuple[str, ...] = (
    *CONTEXT_FEATURES,
    "answer_yes",  # the first answer says yes
    "answer_no",  # the first answer starts with no
    "answer_empty",  # the first answer is empty
    "no_on_found",  # answer_no * found: "no" about a patch a detector found
    "yes_on_found",  # answer_yes * found
)
"""The values an escalation gate scores: the context's, then the first answer's."""

MAX_GATE_WEIGHT = 1e12


def _is_none(value: object) -> bool:
    return value is None


def _finite_weights(weights: list[float], size: int, what: str) -> list[float]:
    if len(weights) != size:
        raise ValueError(f"{what} has {len(weights)} weights, the features are {size}")
    if not all(math.isfinite(w) and abs(w) <= MAX_GATE_WEIGHT for w in weights):
        raise ValueError(f"{what} weights must be finite and at most {MAX_GATE_WEIGHT:g} in size")
    return weights


class GateSpread(BaseModel):
    """The posterior a gate's weights were drawn from, so that the router can tell how sure the
    policy was of each decision a gate made: ``mean``, the posterior mean of the weights (over the
    gate's whole vector, in the units of the drawn weights, the known cost included), and ``root``,
    a lower-triangular ``L`` with ``L L^T`` the weights' covariance over the features ``over``
    (indices into the vector; the other weights are certain), its rows concatenated (row ``i``
    holds ``i + 1`` values). A score's standard deviation at a vector ``x`` is ``|L^T x[over]|``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float]
    over: list[int]
    root: list[float]

    def check(self, size: int, what: str) -> None:
        _finite_weights(self.mean, size, f"the mean of {what}")
        if len(set(self.over)) != len(self.over) or any(not 0 <= i < size for i in self.over):
            raise ValueError(f"the spread of {what} names features outside 0..{size - 1} or one twice")
        k = len(self.over)
        if len(self.root) != k * (k + 1) // 2:
            raise ValueError(f"the spread of {what} over {k} features needs {k * (k + 1) // 2} root values")
        if not all(math.isfinite(v) and abs(v) <= MAX_GATE_WEIGHT for v in self.root):
            raise ValueError(f"the spread of {what} must be finite")

    def mean_score(self, x: Sequence[float]) -> float:
        return math.fsum(w * v for w, v in zip(self.mean, x, strict=True))

    def variance(self, x: Sequence[float]) -> float:
        """The score's variance at ``x``: ``|L^T x[over]|^2``."""
        picked = [x[i] for i in self.over]
        k = len(picked)
        column = [0.0] * k  # (L^T x)_j = sum over i >= j of L_ij x_i
        at = 0
        for i in range(k):
            for j in range(i + 1):
                column[j] += self.root[at] * picked[i]
                at += 1
        return math.fsum(c * c for c in column)


class SiteGate(BaseModel):
    """How one call site decides each of its invocations when it runs.

    *First choice*: each backend in ``choice`` has weights of a linear score over the invocation's
    ``CONTEXT_FEATURES``; the invocation goes to the backend with the highest score (ties to the
    first listed). *Escalation* (VQA, LLM, OCR sites): after the first answer, the call is asked
    again of ``escalate_to`` when ``escalation`` (weights over ``ESCALATION_FEATURES``) scores
    above 0 and ``escalate_to`` is not the backend that answered. A learning policy draws the
    weights per frame (a Thompson sample), so one frame's gates are one draw; it may add the
    posterior each draw came from (``choice_spread`` per backend, ``escalation_spread``), from
    which the router tells how sure the policy was of each decision (the value of a label)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choice: dict[str, list[float]] = Field(min_length=1, max_length=64)
    escalate_to: str | None = None
    escalation: list[float] | None = None
    choice_spread: dict[str, GateSpread] | None = Field(default=None, exclude_if=_is_none)
    escalation_spread: GateSpread | None = Field(default=None, exclude_if=_is_none)

    @model_validator(mode="after")
    def _check(self) -> SiteGate:
        for backend, weights in self.choice.items():
            _finite_weights(weights, len(CONTEXT_FEATURES), f"the choice of {backend!r}")
        if (self.escalate_to is None) != (self.escalation is None):
            raise ValueError("give both escalate_to and escalation, or neither")
        if self.escalation is not None:
            _finite_weights(self.escalation, len(ESCALATION_FEATURES), "the escalation")
        if self.choice_spread is not None:
            if set(self.choice_spread) != set(self.choice):
                raise ValueError("choice_spread must give a spread for each backend of choice, and only those")
            for backend, spread in self.choice_spread.items():
                spread.check(len(CONTEXT_FEATURES), f"the choice of {backend!r}")
        if self.escalation_spread is not None:
            if self.escalation is None:
                raise ValueError("escalation_spread needs an escalation")
            self.escalation_spread.check(len(ESCALATION_FEATURES), "the escalation")
        return self

    @property
    def backends(self) -> set[str]:
        """Every backend this gate can pick."""
        return set(self.choice) | ({self.escalate_to} if self.escalate_to else set())


# -- a decision and its feedback ------------------------------------------------------------------


class ScoreSpread(BaseModel):
    """How a Thompson-sampling policy drew one backend's score at a call site: ``N(mean, std^2)``,
    the largest draw winning; ``per_lambda``, how the mean moves with ``lambda`` (minus the
    backend's cost in the score's unit, where the algorithm adds the known cost term ``lambda *
    cost`` to what it learned), so that the same draw at another ``lambda`` is known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float = Field(allow_inf_nan=False)
    std: float = Field(ge=0, allow_inf_nan=False)
    per_lambda: float = Field(allow_inf_nan=False)


class PolicyDecision(BaseModel):
    """The policy's decision for one frame as the router sees it: a backend per call site, with the
    scores and the propensities: per call site, the probability the policy gave each backend on this
    frame (1 for the backend of a deterministic choice). An algorithm that draws all sites together
    (one configuration of the whole program) also gives ``joint_propensity``, the probability of
    this configuration as a whole; otherwise sites are drawn independently and a configuration's
    probability is the product of its sites'. An algorithm that draws each site's scores from normal
    distributions and adds the known cost term itself (``structured``, ``structured_code``) also
    gives ``score_spreads``: from them the probability of its choices at another ``lambda`` is known
    (off-policy evaluation). ``gates``, when given, decide the named sites at each
    invocation instead (the ``backends`` stay the decision for the other sites and the fallback
    when the gates do not fit the program; the probability of a gated run is computed from the
    gates' spreads by :mod:`fmprog.off_policy`)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str
    backends: dict[str, str]
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    propensities: dict[str, dict[str, float]] | None = None
    joint_propensity: float | None = Field(default=None, ge=0, le=1, exclude_if=_is_none)
    score_spreads: dict[str, dict[str, ScoreSpread]] | None = Field(default=None, exclude_if=_is_none)
    gates: dict[str, SiteGate] | None = Field(default=None, exclude_if=_is_none)


MAX_RECORDS = 4096
"""The most invocation records one feedback carries (later invocations are left out)."""


class InvocationRecord(BaseModel):
    """One invocation a gate decided, as feedback carries it: the call site, the backend that ran,
    the run's call it answered (``call``; an escalation shares its first answer's), the backend it
    re-asked (``escalated_from``), the vector the deciding gate saw (``CONTEXT_FEATURES`` for a
    first choice, ``ESCALATION_FEATURES`` for an escalation), its cost and, for VQA/LLM/OCR answers,
    the task reward this answer would have earned as the program's answer (``reward``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(min_length=1, max_length=200)
    backend: str = Field(min_length=1, max_length=200)
    call: int = Field(ge=0)
    escalated_from: str | None = None
    features: list[float]
    cost: float = Field(ge=0, allow_inf_nan=False)
    reward: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> InvocationRecord:
        size = len(ESCALATION_FEATURES if self.escalated_from is not None else CONTEXT_FEATURES)
        _finite_weights(self.features, size, "the record's features")
        return self


class Feedback(BaseModel):
    """What came back for one decision: the task reward (authors' scheme) or the loss L (paper's),
    the sites that executed, and the cost each executed site incurred (summed over its invocations).

    The task term used in rewards is ``reward`` if given, else ``-loss``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: str | None = None
    reward: float | None = Field(default=None, allow_inf_nan=False)
    loss: float | None = Field(default=None, allow_inf_nan=False)
    executed_sites: list[str] = Field(default_factory=list)
    costs: dict[str, float] = Field(default_factory=dict)
    invocations: list[InvocationRecord] | None = Field(default=None, max_length=MAX_RECORDS, exclude_if=_is_none)

    @model_validator(mode="after")
    def _check(self) -> Feedback:
        if (self.reward is None) == (self.loss is None):
            raise ValueError("give exactly one of reward and loss")
        stray = sorted(set(self.costs) - set(self.executed_sites))
        if stray:
            raise ValueError(f"cost given for site {stray[0]!r}, which is not among executed_sites")
        for site, cost in self.costs.items():
            if not math.isfinite(cost) or cost < 0:
                raise ValueError(f"cost of site {site!r} must be finite and >= 0, got {cost}")
        if len(set(self.executed_sites)) != len(self.executed_sites):
            raise ValueError("executed_sites lists a site twice")
        strays = sorted({r.site for r in self.invocations or ()} - set(self.executed_sites))
        if strays:
            raise ValueError(f"an invocation record names site {strays[0]!r}, which is not among executed_sites")
        return self

    @property
    def task_term(self) -> float:
        """The task part of the reward: ``reward``, or ``-loss``."""
        return float(self.reward) if self.reward is not None else -float(self.loss or 0.0)

    @property
    def total_cost(self) -> float:
        return float(sum(self.costs.values()))


MAX_FEEDBACK_LIST = 256
"""The most feedback one :class:`FeedbackList` carries."""


class FeedbackList(BaseModel):
    """Feedback for several decisions of one program, sent in one request (the router's outbox
    sends its waiting labels this way); each is learned on its own, in order, as if sent alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feedback: list[Feedback] = Field(min_length=1, max_length=MAX_FEEDBACK_LIST)

    @model_validator(mode="after")
    def _check(self) -> FeedbackList:
        if any(item.decision_id is None for item in self.feedback):
            raise ValueError("every feedback of a list needs its decision_id")
        return self


FeedbackListOutcome = Literal["accepted", "repeat", "unknown", "conflict", "invalid"]


class FeedbackListItem(BaseModel):
    """What became of one feedback of a list: ``accepted`` (learned now), ``repeat`` (the same
    feedback was learned before; nothing happens again), or refused: ``unknown`` (no pending
    decision with that id for the program), ``conflict`` (the decision received different
    feedback), ``invalid`` (feedback that does not fit the decision); ``detail`` says why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: str
    outcome: FeedbackListOutcome
    detail: str | None = None


class FeedbackListReply(BaseModel):
    """One outcome per feedback of a list, in its order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    results: list[FeedbackListItem]


class ExpiredDecisions(BaseModel):
    """Decisions whose label window closed without a label: the policy forgets them, learning
    nothing from them (a decision the router gives a default reward comes as a Feedback instead)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_ids: list[str] = Field(min_length=1, max_length=10_000)


# -- reuse: a camera's frame answered with the last answer --------------------------------------------

Camera = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,120}$")]


class ReuseObservation(BaseModel):
    """How a camera's frame differs from its last frame that ran the program (grey 96x72
    signatures, ``fmprog.streams.reuse``), and how many frames ago that run was."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean_diff: float = Field(ge=0, le=255, allow_inf_nan=False, description="Mean absolute difference, grey levels.")
    changed: float = Field(ge=0, le=1, allow_inf_nan=False, description="Share of pixels that changed.")
    age: int = Field(ge=0, le=1_000_000, description="Frames since the last run.")


class ReuseOutcome(BaseModel):
    """What the reuse gate learns from: whether the answer at a frame with these features was the
    last run's (a frame that ran, compared with the run before; or a label for a reused frame)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: Camera
    features: ReuseObservation
    unchanged: bool


class ReuseRequest(BaseModel):
    """The router asks whether to reuse the camera's last answer for a frame; it brings the
    outcome of the camera's last run, if any (the gate learns it first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: Camera
    features: ReuseObservation
    max_age: int = Field(default=10, ge=0, le=10_000, description="An answer older than this is never reused.")
    outcome: ReuseOutcome | None = None


class ReuseReply(BaseModel):
    """The gate's decision: reuse or run, the probability it gave that choice (the off-policy
    log), its estimate that the answer changed, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reuse: bool
    propensity: float = Field(gt=0, le=1)
    p_change: float = Field(ge=0, le=1)
    reason: Literal["first", "max_age", "changed", "explore", "unchanged"]

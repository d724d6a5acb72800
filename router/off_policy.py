"""Off-policy evaluation on the router's side: the propensity logged with every decision, and the
estimates of other policies on a program's labelled decisions (``fmprog.off_policy`` does the
estimating; this module reads the log for it).

*The propensity of a decision* is the probability its policy gave the run that happened
(``fmprog.off_policy.run_probability``): for an up-front decision from the propensities the policy
sent with it; for a gated decision from the gates' spreads (exact where each gate decided one call,
else from samples seeded by the decision id, ``run_seed``, so the evaluation recomputes the same
value). The router's fallback
decision (the policy unreachable, or a cost budget spent) decides without chance: 1. None when the
decision carries neither propensities nor gates, or a failed call hides a decision the run
depended on. The policy's decision itself is stored with the answer, for the evaluation to read.

*An evaluation* reads the program's last ``last`` labelled decisions with their labels; the
fallback decisions among them are left out (the policy did not make them), and so are cameras'
frames answered by reusing the last answer (the reuse gate decided them, not the backends). Each of
the others is a ``LoggedRun``: its decision, its trace (the runtime's invocations, as stored), its
cost, the task reward its label earned, and whether its answer was right (for binary tasks, whether
the label and the answer say yes). A decision stored before propensities were logged has no policy
decision: it is read as a decision without propensities, which the estimates skip.
"""

from __future__ import annotations

from fmprog.contract import CallSiteSpec, PolicyDecision
from fmprog.off_policy import LoggedRun, evaluate, run_probability, run_seed
from fmprog.rewards import is_yes, score_answer
from router.errors import EvaluationRejected
from router.programs import policy_spec
from router.schemas import EvaluationReport, EvaluationRequest, FeedbackRecord, FrameRecord, ProgramPublic
from router.store import Store


def logged_decision(record: FrameRecord, decision: PolicyDecision | None) -> FrameRecord:
    """The answer of a policy's ``decision`` with the decision and its propensity, to be stored."""
    if decision is None:
        return record
    propensity = run_probability(decision, record.trace, run_seed(record.id))
    return record.model_copy(update={"propensity": propensity, "policy_decision": decision})


def logged_run(answer: FrameRecord, label: FeedbackRecord, algorithm: str) -> LoggedRun:
    """A labelled answer of the policy's as the estimators read it."""
    decision = answer.policy_decision or PolicyDecision(algorithm=algorithm, backends=answer.decision)
    return LoggedRun(
        decision=decision,
        trace=answer.trace,
        cost=answer.cost,
        task=label.reward,
        correct=score_answer(answer.kind, answer.answer, label.label).correct,
        positive=is_yes(label.label),
        predicted=is_yes(answer.answer),
        seed=run_seed(answer.id),
    )


def call_sites(program: ProgramPublic) -> list[CallSiteSpec]:
    """The program's call sites with their candidates and costs, as its policy knows them."""
    return list(policy_spec(program).sites)


def evaluate_program(store: Store, program: ProgramPublic, request: EvaluationRequest) -> EvaluationReport:
    """Each target's estimates on the program's last ``request.last`` labelled decisions (see the
    module's docstring); EvaluationRejected naming a target the logged decisions cannot support."""
    labelled = store.labelled_frames(program.id, request.last)
    reused = [answer for answer, _ in labelled if answer.reuse is not None and answer.reuse.reused]
    runs = [
        logged_run(answer, label, program.algorithm)
        for answer, label in labelled
        if not answer.fallback and not (answer.reuse is not None and answer.reuse.reused)
    ]
    sites = call_sites(program)
    try:
        evaluations = evaluate(request.targets, runs, sites, program.kind, program.lambda_, request.draws)
    except ValueError as exc:
        raise EvaluationRejected(str(exc)) from None
    return EvaluationReport(
        program_id=program.id,
        algorithm=program.algorithm,
        lambda_=program.lambda_,
        decisions=len(labelled),
        labelled=len(runs),
        fallbacks=len(labelled) - len(runs) - len(reused),
        reused=len(reused),
        evaluations=evaluations,
    )

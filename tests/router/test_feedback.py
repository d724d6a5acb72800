from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest

from fmprog.rewards import RewardConfig
from router.answering import Answerer
from router.errors import Conflict, Expired, LabelRejected, NotFound
from router.feedback import FeedbackHandler
from router.programs import ProgramRegistry
from router.schemas import FeedbackIn, FeedbackResult
from router.store import Store, utc_now
from tests.fakes import COSTS, Zoo, box
from tests.router.conftest import create

BICYCLE_AND_PERSON = {"bicycle": [box(10, 10, 50, 50)], "person": [box(20, 5, 40, 45)]}


def answer_binary(programs: ProgramRegistry, answerer: Answerer, zoo: Zoo, frame: np.ndarray, yes: bool) -> str:
    """Answer one frame of person_on_bike; the fakes make the program say yes or no."""
    public = programs.register(create("person_on_bike"))
    zoo.set_boxes(BICYCLE_AND_PERSON if yes else {})
    return answerer.answer(public.id, frame, None).decision_id


# The paper's binary scheme: TP +1000, FN -100, TN +1, FP -100.
@pytest.mark.parametrize(
    ("says_yes", "label", "reward"),
    [(True, "yes", 1000.0), (False, "yes", -100.0), (False, "no", 1.0), (True, "No", -100.0)],
)
def test_binary_rewards(programs, answerer, zoo, frame, feedback: FeedbackHandler, says_yes, label, reward):
    decision_id = answer_binary(programs, answerer, zoo, frame, says_yes)
    result = feedback.feedback(FeedbackIn(decision_id=decision_id, label=label)).result
    assert result.reward == reward and not result.repeat
    stored = feedback.store.get_frame(decision_id)
    assert stored.status == "resolved"
    assert result.executed_sites == stored.executed_sites and result.site_costs == stored.site_costs
    assert result.cost == sum(result.site_costs.values())


def test_the_result_names_only_the_sites_that_ran(programs, answerer, zoo, frame, feedback: FeedbackHandler):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=False)
    result = feedback.feedback(FeedbackIn(decision_id=decision_id, label="no")).result
    assert result.executed_sites == ["exists@3:23"]
    assert result.site_costs == {"exists@3:23": COSTS["detect-small"]} and result.cost == COSTS["detect-small"]


# The paper's open-form scheme: +100 if the lower-cased label is in the lower-cased answer, else -100.
@pytest.mark.parametrize(
    ("llm_answer", "label", "reward"),
    [("It is PARIS.", "paris", 100.0), ("Paris", "London", -100.0), ("0", "N/A", 100.0)],
)
def test_open_rewards(programs, answerer, zoo, frame, feedback: FeedbackHandler, llm_answer, label, reward):
    public = programs.register(create("landmark_city", kind="open"))
    zoo.set_boxes({"building": [box(10, 10, 50, 50)]})
    zoo.set_llm(lambda prompt: llm_answer)
    decision_id = answerer.answer(public.id, frame, None).decision_id
    assert feedback.feedback(FeedbackIn(decision_id=decision_id, label=label)).result.reward == reward


def test_the_reward_scheme_is_configurable(programs, answerer, zoo, frame, store: Store):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    handler = FeedbackHandler(store, RewardConfig(scheme="loss"))
    assert handler.feedback(FeedbackIn(decision_id=decision_id, label="no")).result.reward == -1.0


def test_a_repeated_label_returns_the_stored_result_marked_repeat(
    programs, answerer, zoo, frame, feedback: FeedbackHandler
):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    first = feedback.feedback(FeedbackIn(decision_id=decision_id, label="yes")).result
    again = feedback.feedback(FeedbackIn(decision_id=decision_id, label="yes")).result
    assert again.repeat and not first.repeat
    assert again.model_dump(exclude={"repeat"}) == first.model_dump(exclude={"repeat"})


def test_a_different_label_conflicts_and_the_first_stands(programs, answerer, zoo, frame, feedback: FeedbackHandler):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    feedback.feedback(FeedbackIn(decision_id=decision_id, label="yes"))
    with pytest.raises(Conflict, match="already has label 'yes'"):
        feedback.feedback(FeedbackIn(decision_id=decision_id, label="no"))
    assert feedback.store.get_feedback(decision_id).label == "yes"


def test_an_unknown_decision_is_not_found(feedback: FeedbackHandler):
    with pytest.raises(NotFound):
        feedback.feedback(FeedbackIn(decision_id="0" * 32, label="yes"))


def test_an_unreadable_binary_label_is_rejected_and_not_stored(
    programs, answerer, zoo, frame, feedback: FeedbackHandler
):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    with pytest.raises(LabelRejected, match="maybe"):
        feedback.feedback(FeedbackIn(decision_id=decision_id, label="maybe"))
    assert feedback.store.get_feedback(decision_id) is None
    assert feedback.store.get_frame(decision_id).status == "answered"


def test_an_expired_decision_refuses_feedback(programs, answerer, zoo, frame, feedback: FeedbackHandler):
    old = answer_binary(programs, answerer, zoo, frame, yes=True)
    labelled = answer_binary(programs, answerer, zoo, frame, yes=True)
    feedback.feedback(FeedbackIn(decision_id=labelled, label="yes"))
    cutoff = utc_now() + timedelta(seconds=1)
    expired = feedback.store.expire_frames(cutoff, batch=1)  # one per transaction: the loop goes on
    assert [(a.id, a.status) for a in expired] == [(old, "expired")]  # the labelled one stays resolved
    assert feedback.store.get_frame(old).status == "expired"
    assert feedback.store.expire_frames(cutoff) == []
    with pytest.raises(Expired, match="label window has closed"):
        feedback.feedback(FeedbackIn(decision_id=old, label="yes"))
    assert feedback.store.get_feedback(old) is None


def test_a_label_after_the_window_is_refused_before_the_background_expiry(
    programs, answerer, zoo, frame, feedback: FeedbackHandler
):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    closed = FeedbackHandler(feedback.store, window_s=1e-6)
    with pytest.raises(Expired):
        closed.feedback(FeedbackIn(decision_id=decision_id, label="yes"))
    open_ = FeedbackHandler(feedback.store, window_s=3600)
    assert not open_.feedback(FeedbackIn(decision_id=decision_id, label="yes")).result.repeat


def test_feedback_is_accepted_after_the_program_is_deleted(programs, answerer, zoo, frame, feedback: FeedbackHandler):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    programs.delete(feedback.store.get_frame(decision_id).program_id)
    assert feedback.feedback(FeedbackIn(decision_id=decision_id, label="yes")).result.reward == 1000.0


def _race(handlers: list[FeedbackHandler], decision_id: str, labels: list[str]) -> list[FeedbackResult | Exception]:
    barrier = threading.Barrier(len(labels))
    results: list[FeedbackResult | Exception] = [None] * len(labels)  # type: ignore[list-item]

    def send(i: int) -> None:
        barrier.wait()
        try:
            results[i] = (
                handlers[i % len(handlers)].feedback(FeedbackIn(decision_id=decision_id, label=labels[i])).result
            )
        except Conflict as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(labels))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return results


def test_concurrent_feedback_for_one_decision_resolves_once(programs, answerer, zoo, frame, feedback, database):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    with Store(database) as other:  # a second store on the same database (another router) races too
        results = _race([feedback, FeedbackHandler(other)], decision_id, ["yes"] * 16)
    assert all(isinstance(r, FeedbackResult) for r in results)
    assert sum(not r.repeat for r in results) == 1
    assert {r.reward for r in results} == {1000.0}


def test_concurrent_conflicting_labels_keep_exactly_one(programs, answerer, zoo, frame, feedback, database):
    decision_id = answer_binary(programs, answerer, zoo, frame, yes=True)
    with Store(database) as other:
        results = _race([feedback, FeedbackHandler(other)], decision_id, ["yes", "no"] * 8)
    accepted = [r for r in results if isinstance(r, FeedbackResult)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(accepted) + len(conflicts) == 16 and sum(not r.repeat for r in accepted) == 1
    winner = feedback.store.get_feedback(decision_id).label
    assert {r.label for r in accepted} == {winner} and len(conflicts) == 8
    [counts] = feedback.store.quality().values()  # the one label is counted once
    assert (counts.right, counts.wrong, counts.tp, counts.fp) == ((1, 0, 1, 0) if winner == "yes" else (0, 1, 0, 1))

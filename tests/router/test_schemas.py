from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from fmprog.program import Invocation
from router.schemas import FeedbackIn, FrameRecord, FrameResult, ProgramCreate

SOURCE = "def execute_command(image):\n    return 'yes'\n"


def make(**fields: object) -> ProgramCreate:
    return ProgramCreate.model_validate({"kind": "binary", "lambda": 0.5, **fields})


def test_source_or_query_is_accepted():
    assert make(source=SOURCE).source == SOURCE
    assert make(query="Is there a dog?").query == "Is there a dog?"


@pytest.mark.parametrize("fields", [{}, {"source": SOURCE, "query": "Is there a dog?"}])
def test_exactly_one_of_source_and_query(fields: dict[str, str]):
    with pytest.raises(ValidationError, match="exactly one of 'source'"):
        make(**fields)


@pytest.mark.parametrize("lam", [-0.1, math.inf, math.nan, "a lot"])
def test_lambda_must_be_finite_and_non_negative(lam: object):
    with pytest.raises(ValidationError, match="lambda"):
        make(source=SOURCE, **{"lambda": lam})


def test_lambda_is_called_lambda_on_the_wire():
    request = make(source=SOURCE, **{"lambda": 0.0})
    assert request.lambda_ == 0.0
    assert request.model_dump()["lambda"] == 0.0
    assert "lambda_" not in request.model_dump()


@pytest.mark.parametrize("kind", ["multi", "", None])
def test_kind_is_binary_or_open(kind: object):
    with pytest.raises(ValidationError, match="kind"):
        make(source=SOURCE, kind=kind)


def test_allowed_backends_are_keyed_by_known_functions_and_valid_names():
    assert make(source=SOURCE, backends={"vqa": ["vqa-small"]}).backends == {"vqa": ["vqa-small"]}
    with pytest.raises(ValidationError, match="backends"):
        make(source=SOURCE, backends={"depth": ["depth-small"]})
    with pytest.raises(ValidationError, match="backends"):
        make(source=SOURCE, backends={"vqa": ["Not A Name"]})


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="budget"):
        make(source=SOURCE, budget=3)


def test_feedback_needs_a_decision_id_and_a_non_empty_label():
    assert FeedbackIn(decision_id="a" * 32, label=" yes ").label == "yes"
    with pytest.raises(ValidationError, match="label"):
        FeedbackIn(decision_id="a" * 32, label="   ")
    with pytest.raises(ValidationError, match="decision_id"):
        FeedbackIn(decision_id="../etc", label="yes")


STORED_CALL = {  # one item of a stored trace, as routers have always written it
    "site": "query@1:1",
    "function": "vqa",
    "backend": "vqa-small",
    "cost": 1.0,
    "latency_s": 0.5,
    "ok": False,
    "attempt": 2,
    "fallback_from": "vqa-large",
    "error": "TimeoutError: read timed out",
}


def test_a_trace_is_the_runtimes_invocations_read_and_written_with_site_as_the_key():
    gated = {
        **STORED_CALL,
        "ok": True,
        "escalated_from": "vqa-tiny",
        "features": {"call": 0, "site_calls": 0, "sites_left": 1},
    }
    record = FrameRecord.model_validate(
        {
            "id": "a" * 32,
            "program_id": "b" * 32,
            "kind": "binary",
            "frame_id": None,
            "decision": {"query@1:1": "vqa-large"},
            "fallback": False,
            "answer": "yes",
            "error": None,
            "trace": [STORED_CALL, gated],
            "executed_sites": ["query@1:1"],
            "site_costs": {"query@1:1": 2.0},
            "cost": 2.0,
            "latency_s": 1.0,
            "status": "answered",
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    assert all(type(call) is Invocation for call in record.trace)
    assert [call.site for call in record.trace] == ["query@1:1", "query@1:1"]
    result = FrameResult(
        decision_id=record.id,
        program_id=record.program_id,
        decision=record.decision,
        fallback=record.fallback,
        trace=record.trace,
        cost=record.cost,
        latency_s=record.latency_s,
    )
    sent = result.model_dump(mode="json")["trace"]
    assert sent[0] == STORED_CALL  # unset gate fields left out, as before
    assert sent[1] == {**gated, "features": record.trace[1].features.model_dump(mode="json")}
    assert FrameRecord.model_validate_json(record.model_dump_json()).trace == record.trace

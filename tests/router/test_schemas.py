from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from router.schemas import FeedbackIn, ProgramCreate

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

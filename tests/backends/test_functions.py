"""The table of neural functions: one record per function, complete and consistent with the
program API, the wire schemas, the engines and the runtime protocols that read it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from fmprog.backends import FUNCTIONS, BackendRegistry, BackendSpec, Detection, Function
from fmprog.backends.base import FunctionModel
from fmprog.backends.functions import MalformedResult, routed_methods
from fmprog.engines.base import Engine, EngineError, local_model
from fmprog.program import api
from fmprog.program.callsites import MODULE_ROUTED_FUNCTIONS, ROUTED_METHODS

RESULTS = {
    Function.detect: [Detection((1.0, 2.0, 3.0, 4.0), 0.5)],
    Function.vqa: "red",
    Function.llm: "Paris",
    Function.ocr: "STOP 42",
}


def test_every_function_has_one_record_under_its_name():
    assert set(FUNCTIONS) == set(Function) == set(RESULTS)
    for name, record in FUNCTIONS.items():
        assert record.name == name and record.method == name.value and record.route == f"/{name.value}"
        assert record.batch_method == f"{name.value}_batch" and hasattr(Engine, record.batch_method)


def test_routed_methods_come_from_the_table_and_exist_in_the_program_api():
    assert routed_methods() == ROUTED_METHODS
    methods = [m for record in FUNCTIONS.values() for m in record.routed_methods]
    assert len(methods) == len(set(methods)), "a method routes to one function"
    for method in methods:
        assert callable(getattr(api.ImagePatch, method))
    assert set(methods) >= MODULE_ROUTED_FUNCTIONS
    for record in FUNCTIONS.values():
        for line in record.prompt:
            owner, _, name = line.target.rpartition(".")
            assert name in record.routed_methods, line
            assert callable(getattr(api.ImagePatch if owner == "ImagePatch" else api, name)), line


@pytest.mark.parametrize("function", list(Function))
def test_wire_schemas_take_the_calls_inputs_and_refuse_anything_else(function: Function):
    record = FUNCTIONS[function]
    body = {"image": "aGk="} if record.takes_image else {}
    if record.text is not None:
        body[record.text] = "what"
    request = record.request.model_validate(body)
    assert record.request_inputs(request) == (body.get("image"), body.get(record.text or ""))
    with pytest.raises(ValidationError, match="extra"):
        record.request.model_validate({**body, "extra": 1})
    if record.text is not None:
        with pytest.raises(ValidationError, match=record.text):
            record.request.model_validate({**body, record.text: ""})


@pytest.mark.parametrize("function", list(Function))
def test_results_survive_the_reply_and_the_json_cache(function: Function):
    record = FUNCTIONS[function]
    result = RESULTS[function]
    reply = record.to_reply(result, {"backend": "b", "batch_size": 1, "compute_s": 0.0})
    assert isinstance(reply, record.reply)
    assert record.from_reply(record.reply.model_validate(reply.model_dump(mode="json"))) == result
    assert record.decode(record.encode(result)) == result
    assert record.check(result) == result
    with pytest.raises(MalformedResult):
        record.check(42)


@pytest.mark.parametrize("function", list(Function))
def test_a_single_calls_arguments_and_a_batchs_columns(function: Function):
    record = FUNCTIONS[function]
    image = np.zeros((4, 4, 3), np.uint8)
    arguments = record.arguments(image, "text")
    assert len(arguments) == int(record.takes_image) + int(record.text is not None)
    seen_image, seen_text = record.inputs(arguments)
    assert (seen_image is image) == record.takes_image
    assert seen_text == ("text" if record.text is not None else None)
    assert len(record.batch_columns([image], ["text"])) == len(arguments)
    with pytest.raises(TypeError, match="arguments"):
        record.inputs((*arguments, "one too many"))


class _Reader(Engine):
    """A toy engine that reads every image as "HI" (it overrides only its function's method)."""

    def load(self) -> None:
        return None

    def ocr_batch(self, images: Sequence[np.ndarray]) -> list[str]:
        return ["HI" for _ in images]


def test_the_engine_base_guards_every_batch_method_generically():
    reader = _Reader(BackendSpec(name="ocr-toy", function="ocr", cost=1, engine={"kind": "tesseract"}))
    image = np.zeros((4, 4, 3), np.uint8)
    assert reader.batch([image, image]) == ["HI", "HI"]
    assert local_model(reader).ocr(image) == "HI"
    with pytest.raises(EngineError, match="serves ocr, not llm"):
        reader.llm_batch(["hello"])
    # The same class configured for another function refuses its own method too.
    torch = {"kind": "torch", "model": {"zoo": "vqa-small"}}
    misplaced = _Reader(BackendSpec(name="vqa-toy", function="vqa", cost=1, engine=torch))
    with pytest.raises(EngineError, match="serves vqa, not ocr"):
        misplaced.ocr_batch([image])
    with pytest.raises(EngineError, match="the torch engine has no vqa"):
        misplaced.batch([image], ["What is this?"])


def test_the_registry_checks_a_model_serves_its_function():
    spec = BackendSpec(name="ocr-small", function="ocr", cost=0.4)
    BackendRegistry.from_specs([spec], {"ocr-small": FunctionModel(Function.ocr, lambda image: "", "reader")})
    with pytest.raises(TypeError, match="has no ocr"):
        BackendRegistry.from_specs([spec], {"ocr-small": FunctionModel(Function.vqa, lambda i, q: "", "vqa")})


def test_an_ocr_backend_needs_an_engine_that_reads_text():
    with pytest.raises(ValidationError, match="engine 'torch' cannot serve ocr"):
        BackendSpec(name="ocr-x", function="ocr", cost=1, engine={"kind": "torch", "model": {"zoo": "detect-small"}})
    with pytest.raises(ValidationError, match="engine 'rapidocr' cannot serve vqa"):
        BackendSpec(name="vqa-x", function="vqa", cost=1, engine={"kind": "rapidocr"})

"""The OpenAI-compatible client engine.

``llm`` runs against the real llama-cpp-python server with SmolLM2. That server cannot see
images, so the ``vqa`` request (image part, question part), error mapping and ordering under
concurrency are checked against a small local HTTP server that records what it receives.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from fmprog.backends.config import BackendSpec
from fmprog.engines import build_engine
from fmprog.engines.base import EngineError
from fmprog.engines.llama_cpp import LlamaCppEngine
from fmprog.engines.openai import OpenAIEngine
from services.cluster import free_port
from tests.engines.conftest import MAX_TOKENS, LlamaServer


def openai_spec(base_url: str, model: str, function: str = "llm", **options: Any) -> BackendSpec:
    engine = {"kind": "openai", "base_url": base_url, "model": model, "max_tokens": MAX_TOKENS} | options
    return BackendSpec.model_validate(
        {"name": f"{function}-remote", "function": function, "cost": 135, "engine": engine}
    )


def loaded(spec: BackendSpec) -> OpenAIEngine:
    engine = build_engine(spec)
    assert isinstance(engine, OpenAIEngine)
    engine.load()
    return engine


Connect = Callable[[BackendSpec], OpenAIEngine]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``loaded``, closing each engine after the test."""
    engines: list[OpenAIEngine] = []

    def open_engine(spec: BackendSpec) -> OpenAIEngine:
        engines.append(loaded(spec))
        return engines[-1]

    yield open_engine
    for engine in engines:
        engine.close()


# -- against the real llama.cpp server ---------------------------------------------------------


@pytest.fixture(scope="module")
def remote_llm(llama_server: LlamaServer) -> Iterator[OpenAIEngine]:
    engine = loaded(openai_spec(llama_server.base_url, llama_server.model))
    yield engine
    engine.close()


PROMPTS = ["What is the capital of France?", "Name a fruit that is yellow.", "Say hello."]


def test_real_server_answers_in_order_and_deterministically(remote_llm: OpenAIEngine) -> None:
    batch = remote_llm.llm_batch(PROMPTS)  # concurrent requests
    assert all(answer.strip() for answer in batch)
    assert [remote_llm.llm_batch([p])[0] for p in PROMPTS] == batch  # asked again, one at a time


def test_real_server_matches_the_in_process_engine(llama_server: LlamaServer, smollm2_engine: LlamaCppEngine) -> None:
    # Same GGUF and chat template (both take it from the file), greedy decoding, same length. The
    # OpenAI API has no repeat penalty, and llama.cpp's server defaults it to 1.1 where the binding
    # uses 1.0; set it to 1.0 in the request (a llama.cpp extension) to compare like with like.
    def served(prompt: str) -> str:
        request = {
            "model": llama_server.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "repeat_penalty": 1.0,
        }
        response = httpx.post(f"{llama_server.base_url}/chat/completions", json=request, timeout=60)
        return response.raise_for_status().json()["choices"][0]["message"]["content"].strip()

    assert [served(p) for p in PROMPTS] == smollm2_engine.llm_batch(PROMPTS)


def test_real_server_health(remote_llm: OpenAIEngine, llama_server: LlamaServer) -> None:
    remote_llm.check_health()
    assert remote_llm.describe()["model"] == llama_server.model
    with pytest.raises(EngineError, match="serves llm, not vqa"):
        OpenAIEngine(openai_spec(llama_server.base_url, llama_server.model)).vqa_batch([], [])


def test_unknown_model_fails_at_load_naming_it(llama_server: LlamaServer) -> None:
    with pytest.raises(EngineError) as info:
        loaded(openai_spec(llama_server.base_url, "no-such-model"))
    assert "'no-such-model'" in str(info.value) and llama_server.model in str(info.value)


def test_unset_api_key_variable_fails_at_load(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMPROG_TEST_ABSENT_KEY", raising=False)
    with pytest.raises(EngineError, match="FMPROG_TEST_ABSENT_KEY"):
        loaded(openai_spec(llama_server.base_url, llama_server.model, api_key_env="FMPROG_TEST_ABSENT_KEY"))


def test_server_down_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match=r"GET http://127\.0\.0\.1:\d+/v1/models failed"):
        loaded(openai_spec(f"http://127.0.0.1:{free_port()}/v1", "any", timeout_s=2))


# -- against a recording server ----------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Reply = tuple[int, bytes]


@dataclass
class RecordingServer:
    """Answers ``/v1/models`` with one model and chat completions with ``reply(body)``."""

    base_url: str
    requests: list[Recorded] = field(default_factory=list)
    reply: Callable[[Any], Reply] = lambda body: (200, completion("ok"))
    models: bytes = json.dumps({"object": "list", "data": [{"id": "vlm"}]}).encode()

    def chats(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            status, data = (200, state.models) if self.path == "/v1/models" else state.reply(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = RecordingServer(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_vqa_sends_the_image_as_a_png_data_url_then_the_question(recorder: RecordingServer, connect: Connect) -> None:
    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    engine = connect(openai_spec(recorder.base_url, "vlm", function="vqa", system_prompt="Answer briefly."))
    assert engine.vqa_batch([image], ["What colour is it?"]) == ["ok"]

    (request,) = recorder.chats()
    assert request.body["model"] == "vlm"
    assert (request.body["max_tokens"], request.body["temperature"]) == (MAX_TOKENS, 0.0)
    system, user = request.body["messages"]
    assert system == {"role": "system", "content": "Answer briefly."}
    image_part, text_part = user["content"]
    assert user["role"] == "user" and text_part == {"type": "text", "text": "What colour is it?"}
    assert image_part["type"] == "image_url"
    prefix, _, encoded = image_part["image_url"]["url"].partition(",")
    assert prefix == "data:image/png;base64"
    decoded = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), image)


def test_batches_run_concurrently_and_keep_their_order(recorder: RecordingServer, connect: Connect) -> None:
    def slow_echo(body: Any) -> Reply:
        question = body["messages"][-1]["content"][-1]["text"]
        time.sleep(0.3 if question == "q0" else 0.05)  # the first answer arrives last
        return 200, completion(f"answer to {question}")

    recorder.reply = slow_echo
    engine = connect(openai_spec(recorder.base_url, "vlm", function="vqa"))
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    start = time.perf_counter()
    answers = engine.vqa_batch(images, [f"q{i}" for i in range(6)])
    elapsed = time.perf_counter() - start
    assert answers == [f"answer to q{i}" for i in range(6)]
    assert elapsed < 0.3 + 5 * 0.05  # not one after another


def test_bearer_key_comes_from_the_named_variable(
    recorder: RecordingServer, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMPROG_TEST_KEY", "sekret")
    engine = connect(openai_spec(recorder.base_url, "vlm", api_key_env="FMPROG_TEST_KEY"))
    engine.llm_batch(["hi"])
    assert {r.headers.get("Authorization") for r in recorder.requests} == {"Bearer sekret"}
    assert recorder.chats()[0].body["messages"] == [{"role": "user", "content": "hi"}]


def test_chat_sends_the_whole_conversation(recorder: RecordingServer, connect: Connect) -> None:
    engine = connect(openai_spec(recorder.base_url, "vlm"))
    conversation = [
        {"role": "system", "content": "Write code."},
        {"role": "user", "content": "Task 1"},
        {"role": "assistant", "content": "```python\npass\n```"},
        {"role": "user", "content": "That program is wrong."},
    ]
    assert engine.chat(conversation, max_tokens=300) == "ok"
    assert engine.chat(conversation) == "ok"
    first, second = recorder.chats()
    assert first.body["messages"] == conversation and first.body["max_tokens"] == 300
    assert second.body["max_tokens"] == MAX_TOKENS  # the configured limit unless overridden
    vqa = connect(openai_spec(recorder.base_url, "vlm", function="vqa"))
    with pytest.raises(EngineError, match="serves vqa, not llm"):
        vqa.chat(conversation)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((500, json.dumps({"error": {"message": "out of memory"}}).encode()), "HTTP 500: out of memory"),
        ((400, json.dumps({"detail": "bad request body"}).encode()), "HTTP 400: bad request body"),
        ((502, b"upstream down"), "HTTP 502: upstream down"),
        ((200, b"not json"), "malformed response.*not json"),
        ((200, json.dumps({"choices": []}).encode()), "malformed response"),
        ((200, json.dumps({"choices": [{"message": {"content": None}}]}).encode()), "malformed response"),
    ],
)
def test_server_errors_become_engine_errors(
    recorder: RecordingServer, connect: Connect, reply: Reply, message: str
) -> None:
    recorder.reply = lambda body: reply
    engine = connect(openai_spec(recorder.base_url, "vlm"))
    with pytest.raises(EngineError, match=message):
        engine.llm_batch(["hi", "there"])


def test_timeouts_become_engine_errors(recorder: RecordingServer, connect: Connect) -> None:
    def stall(body: Any) -> Reply:
        time.sleep(1.0)
        return 200, completion("late")

    recorder.reply = stall
    engine = connect(openai_spec(recorder.base_url, "vlm", timeout_s=0.2))
    with pytest.raises(EngineError, match=r"timed out after 0\.2 s"):
        engine.llm_batch(["hi"])


def test_malformed_model_list_and_bad_images(recorder: RecordingServer, connect: Connect) -> None:
    engine = connect(openai_spec(recorder.base_url, "vlm", function="vqa"))
    with pytest.raises(EngineError, match="H x W x 3 uint8"):
        engine.vqa_batch([np.zeros((4, 4), np.uint8)], ["q"])
    with pytest.raises(EngineError, match="1 images but 2 questions"):
        engine.vqa_batch([np.zeros((4, 4, 3), np.uint8)], ["q", "r"])
    recorder.models = b'{"models": []}'
    with pytest.raises(EngineError, match="malformed response"):
        engine.check_health()
    with pytest.raises(EngineError, match="serves vqa, not llm"):
        engine.llm_batch(["hi"])
    engine.close()
    with pytest.raises(EngineError, match="not loaded"):
        engine.vqa_batch([np.zeros((4, 4, 3), np.uint8)], ["q"])

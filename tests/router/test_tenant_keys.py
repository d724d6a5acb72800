"""Tenants' keys in the store (SQLite and PostgreSQL), the key ring that resolves them, the stored
bytes each tenant's decisions hold, and ``fmprog keys``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from launcher.cli import main
from router.auth import KeyRing
from router.store import Store, utc_now
from router.tenants import Caller, key_digest, key_id
from tests.router.conftest import create


def test_keys_are_stored_as_digests_and_revoked(database):
    with Store(database) as store:
        key, record = store.add_key("acme")
        admin, _ = store.add_key("ops", admin=True)
        assert key.startswith(f"fmp_{record.id}_") and key_id(key) == record.id
        found, digest = store.find_key(record.id)
        assert found == record and digest == key_digest(key) and key not in digest
        assert store.has_keys()
        assert [k.tenant for k in store.list_keys()] == ["acme", "ops"]
        assert store.revoke_key(record.id).revoked_at is not None
        first = store.find_key(record.id)[0].revoked_at
        assert store.revoke_key(record.id).revoked_at == first  # revoking again keeps the first time
        assert store.has_keys()  # the admin's is in force
        store.revoke_key(key_id(admin))
        assert not store.has_keys()


def test_the_ring_resolves_shared_and_tenant_keys_and_forgets_revoked_ones(tmp_path: Path):
    now = [0.0]
    with Store(tmp_path / "router.db") as store:
        key, record = store.add_key("acme")
        admin, _ = store.add_key("ops", admin=True)
        ring = KeyRing(store, "s" * 24, cache_s=5, clock=lambda: now[0])
        assert ring.resolve("s" * 24) == Caller()
        assert ring.resolve(key) == Caller(tenant="acme", key_id=record.id)
        assert ring.resolve(admin).admin and ring.resolve(admin).sees("acme")
        assert not ring.resolve(key).sees("globex")
        assert ring.resolve(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # the id right, the secret wrong
        assert ring.resolve("fmp_nothing") is None and ring.resolve("") is None
        store.revoke_key(record.id)
        assert ring.known(key) is not None  # cached for cache_s
        now[0] = 5.0
        assert ring.known(key) is None and ring.resolve(key) is None


def test_keys_required_follows_the_stored_keys(tmp_path: Path):
    now = [0.0]
    with Store(tmp_path / "router.db") as store:
        ring = KeyRing(store, cache_s=1, clock=lambda: now[0])
        assert ring.keys_required() is False and ring.known_required() is False
        store.add_key("acme")
        assert ring.known_required() is False  # until the cache runs out
        now[0] = 1.0
        assert ring.known_required() is None and ring.keys_required() is True
        assert KeyRing(store, require_keys=True).known_required() is True


def test_stored_bytes_are_counted_per_tenant_and_freed_by_retention(programs, answerer, store, frame):
    mine = programs.register(create("person_on_bike"), tenant="acme")
    theirs = programs.register(create("person_on_bike"))
    answerer.answer(mine.id, frame, None)
    used = store.stored_bytes("acme")
    assert used > 300  # the decision, its trace and answer
    answerer.answer(mine.id, frame, None)
    assert store.stored_bytes("acme") == pytest.approx(2 * used, rel=0.05)
    answerer.answer(theirs.id, frame, None)
    assert store.stored_bytes("default") > 0
    store.prune(utc_now() + timedelta(seconds=1))
    assert store.stored_bytes("acme") == 0 and store.stored_bytes("default") == 0


def test_fmprog_keys_creates_lists_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    state = str(tmp_path / "state")
    assert main(["keys", "create", "acme", "--state-dir", state]) == 0
    key = capsys.readouterr().out.strip()
    assert key_id(key) is not None
    assert main(["keys", "create", "ops", "--admin", "--state-dir", state]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--state-dir", state, "--tenant", "acme"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(k["id"], k["tenant"], k["admin"], k["revoked_at"]) for k in listed] == [(key_id(key), "acme", False, None)]
    assert main(["keys", "revoke", key_id(key), "--state-dir", state]) == 0
    with Store(Path(state) / "router.sqlite3") as store:
        assert store.find_key(key_id(key))[0].revoked_at is not None
        assert KeyRing(store).resolve(key) is None
    assert main(["keys", "revoke", "000000000000", "--state-dir", state]) == 2
    assert "no API key with id '000000000000'" in capsys.readouterr().err
    assert main(["keys", "create", "no spaces", "--state-dir", state]) == 2
    assert main(["keys", "list", "--database", f"sqlite:///{state}/router.sqlite3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

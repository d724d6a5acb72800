"""How many program workers a machine's memory allows: their address spaces add up to at most a
share of it (the physical memory, or the cgroup's limit when smaller), at least one worker and at
most the number asked for; none stays none."""

from __future__ import annotations

import logging

import pytest

from fmprog.program import workers
from fmprog.program.workers import machine_memory, pool_size

GB = 2**30


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch):
    """Set the machine's memory that ``pool_size`` reads, in GB."""

    def set_memory(gb: float | None) -> None:
        monkeypatch.setattr(workers, "machine_memory", lambda: None if gb is None else int(gb * GB))

    return set_memory


def test_the_workers_address_spaces_fit_the_share(memory):
    memory(24)  # 24 GB, half of it for 1536 MB workers: 8 of them, not 32
    assert pool_size(32, 1536, 0.5) == 8
    assert pool_size(4, 1536, 0.5) == 4  # fewer asked for: as many
    assert pool_size(32, 1024, 0.25) == 6
    assert pool_size(32, 1536, 1.0) == 16


def test_at_least_one_worker_and_none_stays_none(memory):
    memory(1)
    assert pool_size(32, 1536, 0.5) == 1  # not even one fits: one all the same (programs need one)
    assert pool_size(0, 1536, 0.5) == 0  # no workers: programs run in the serving process
    memory(None)  # the memory cannot be read: as many as asked for
    assert pool_size(32, 1536, 0.5) == 32


def test_the_cgroup_limit_counts_when_smaller(tmp_path, monkeypatch):
    pages = {"SC_PHYS_PAGES": 24 * GB // 4096, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(workers.os, "sysconf", lambda name: pages[name])
    limit = tmp_path / "memory.max"
    limit.write_text("4294967296\n")  # a container of 4 GB
    assert machine_memory(limit) == 4 * GB
    limit.write_text(f"{64 * GB}\n")  # a limit above the machine's memory: the machine's
    assert machine_memory(limit) == 24 * GB
    limit.write_text("max\n")  # no limit
    assert machine_memory(limit) == 24 * GB
    assert machine_memory(tmp_path / "absent") == 24 * GB  # no cgroup v2


def test_the_router_starts_the_pool_that_fits_and_says_why(memory, tmp_path, caplog):
    from fmprog.backends import BackendCatalog
    from router.outbox import Outbox
    from router.service import RouterService
    from router.store import Store
    from tests.fakes import Zoo

    memory(6)  # half of 6 GB: two workers of 1536 MB
    zoo = Zoo()
    store = Store(tmp_path / "router.db")
    caplog.set_level(logging.WARNING, logger="router.service")
    service = RouterService(
        store,
        BackendCatalog(backends=zoo.specs),
        zoo.registry(),
        policy=None,
        outbox=Outbox(store),
        program_workers=32,
        program_worker_memory_mb=1536,
        program_memory_share=0.5,
    )
    try:
        assert service.answerer.executor.size == 2
        assert "2 program workers, not 32" in caplog.text and "6144 MB" in caplog.text
    finally:
        service.close()
        store.close()

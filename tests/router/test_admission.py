"""Admission control of one router: frames run at once while slots are free, wait in a bounded
queue, or are refused (a tenant's quota: 429; the router's queue full: 503); freed slots go first to
the tenant with the fewest frames running; a cancelled waiter or a failed frame never keeps a slot."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from router.admission import Admission, TenantLoad, TenantQuota
from router.errors import Overloaded, QuotaExceeded

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

UNLIMITED = TenantQuota(max_in_flight=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Frames:
    """Frames run in their own tasks, each holding its slot until the test lets it finish."""

    def __init__(self, admission: Admission, tasks: anyio.abc.TaskGroup):
        self.admission, self.tasks = admission, tasks
        self.started: list[str] = []
        self.refused: dict[str, Exception] = {}

    def send(self, tenant: str, label: str) -> anyio.Event:
        finish = anyio.Event()
        self.tasks.start_soon(self._run, tenant, label, finish)
        return finish

    async def _run(self, tenant: str, label: str, finish: anyio.Event) -> None:
        try:
            async with self.admission.slot(tenant):
                self.started.append(label)
                await finish.wait()
        except (QuotaExceeded, Overloaded) as exc:
            self.refused[label] = exc


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


async def test_frames_run_at_once_while_slots_are_free():
    admission = Admission(slots=2, queue=4, quota=UNLIMITED)
    async with admission.slot("acme"), admission.slot("beta"):
        assert (admission.running, admission.waiting) == (2, 0)
        assert admission.snapshot() == {"acme": TenantLoad(1, 0), "beta": TenantLoad(1, 0)}
    assert (admission.running, admission.waiting, admission.snapshot()) == (0, 0, {})


async def test_a_frame_waits_for_a_slot_then_runs_when_one_frees():
    admission = Admission(slots=1, queue=4, quota=UNLIMITED)
    async with anyio.create_task_group() as tasks:
        frames = Frames(admission, tasks)
        first = frames.send("acme", "a1")
        await settle()
        second = frames.send("acme", "a2")
        await settle()
        assert frames.started == ["a1"]
        assert admission.snapshot() == {"acme": TenantLoad(running=1, waiting=1)}
        first.set()
        await settle()
        assert frames.started == ["a1", "a2"]
        assert admission.snapshot() == {"acme": TenantLoad(running=1, waiting=0)}
        second.set()
    assert admission.running == 0


async def test_a_tenant_past_max_in_flight_is_refused_with_retry_after():
    admission = Admission(slots=1, queue=8, quota=TenantQuota(max_in_flight=2))
    async with anyio.create_task_group() as tasks:
        frames = Frames(admission, tasks)
        finishes = [frames.send("acme", "a1"), frames.send("acme", "a2")]  # one runs, one waits
        await settle()
        with pytest.raises(QuotaExceeded) as refused:
            async with admission.slot("acme"):
                pytest.fail("ran past max_in_flight")
        assert refused.value.retry_after_s == 1
        assert str(refused.value) == "tenant 'acme' has 2 frames in flight, its max_in_flight of 2: retry after 1 s"
        assert admission.snapshot() == {"acme": TenantLoad(1, 1)}
        for finish in finishes:
            finish.set()


async def test_a_full_queue_refuses_as_overloaded():
    clock = Clock()
    admission = Admission(slots=1, queue=1, quota=UNLIMITED, clock=clock)
    async with anyio.create_task_group() as tasks:
        frames = Frames(admission, tasks)
        finishes = [frames.send("acme", "a1"), frames.send("beta", "b1")]
        await settle()
        with pytest.raises(Overloaded) as refused:
            async with admission.slot("gamma"):
                pytest.fail("ran past a full queue")
        assert refused.value.retry_after_s == 1  # no frame has finished yet: nothing to estimate from
        assert "1 slots are busy and 1 frames wait, its queue of 1; tenant 'gamma'" in str(refused.value)
        clock.now += 4  # a1 holds its slot 4 s: the queue of one drains in about 2 x 4 s
        finishes[0].set()  # b1 runs
        finishes.append(frames.send("delta", "d1"))  # and d1 fills the queue again
        await settle()
        with pytest.raises(Overloaded) as refused:
            async with admission.slot("gamma"):
                pytest.fail("ran past a full queue")
        assert refused.value.retry_after_s == 8
        assert frames.started == ["a1", "b1"] and frames.refused == {}
        for finish in finishes:
            finish.set()
    assert (admission.running, admission.waiting) == (0, 0)


async def test_no_queue_refuses_once_the_slots_are_busy():
    admission = Admission(slots=1, queue=0, quota=UNLIMITED)
    async with admission.slot("acme"):
        with pytest.raises(Overloaded):
            async with admission.slot("beta"):
                pytest.fail("waited with a queue of 0")
    async with admission.slot("beta"):
        assert admission.running == 1


async def test_frames_per_s_refuses_past_the_burst_then_admits_once_a_token_refills():
    clock = Clock()
    admission = Admission(slots=4, queue=4, quota=TenantQuota(frames_per_s=2), clock=clock)
    for _ in range(2):  # a burst of frames_per_s frames
        async with admission.slot("acme"):
            pass
    with pytest.raises(QuotaExceeded) as refused:
        async with admission.slot("acme"):
            pytest.fail("ran past frames_per_s")
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert "tenant 'acme'" in str(refused.value) and "frames_per_s of 2" in str(refused.value)
    clock.now += 0.3
    with pytest.raises(QuotaExceeded) as refused:
        async with admission.slot("acme"):
            pytest.fail("ran before its token")
    assert refused.value.retry_after_s == pytest.approx(0.2)
    async with admission.slot("beta"):  # another tenant has its own bucket
        pass
    clock.now += 0.2
    async with admission.slot("acme"):
        assert admission.snapshot() == {"acme": TenantLoad(1, 0)}


async def test_a_slow_rate_has_a_bucket_of_one_frame():
    clock = Clock()
    admission = Admission(slots=4, queue=4, quota=TenantQuota(frames_per_s=0.25), clock=clock)
    async with admission.slot("acme"):
        pass
    with pytest.raises(QuotaExceeded) as refused:
        async with admission.slot("acme"):
            pytest.fail("ran past frames_per_s")
    assert refused.value.retry_after_s == pytest.approx(4)


async def test_a_frame_refused_for_another_reason_does_not_spend_a_token():
    clock = Clock()
    admission = Admission(slots=1, queue=0, quota=TenantQuota(frames_per_s=1, max_in_flight=1), clock=clock)
    async with admission.slot("acme"):  # spends the bucket's one token
        clock.now += 1
        with pytest.raises(QuotaExceeded, match="max_in_flight"):  # refused, its token given back
            async with admission.slot("acme"):
                pytest.fail("ran past max_in_flight")
    async with admission.slot("acme"):
        pass


async def test_stored_bytes_over_quota_refuses_and_is_read_once_per_five_seconds():
    clock = Clock()
    reads: list[str] = []
    stored = {"acme": 3 * 2**20, "beta": 1 * 2**20}

    def stored_bytes(tenant: str) -> int:
        reads.append(tenant)
        return stored[tenant]

    admission = Admission(slots=2, queue=2, quota=TenantQuota(max_stored_mb=2), stored_bytes=stored_bytes, clock=clock)
    with pytest.raises(QuotaExceeded) as refused:
        async with admission.slot("acme"):
            pytest.fail("ran past max_stored_mb")
    assert refused.value.retry_after_s == 60
    assert str(refused.value) == "tenant 'acme' stores 3.0 MB, its max_stored_mb of 2: retry after 60 s"
    async with admission.slot("beta"):
        pass
    stored["acme"] = 2**20  # retention freed room, but the cached value holds for 5 s
    clock.now += 4.9
    with pytest.raises(QuotaExceeded):
        async with admission.slot("acme"):
            pytest.fail("the cache was not used")
    assert reads == ["acme", "beta"]
    clock.now += 0.1
    async with admission.slot("acme"):
        pass
    assert reads == ["acme", "beta", "acme"]


async def test_stored_bytes_at_the_quota_exactly_is_refused():
    admission = Admission(slots=1, queue=0, quota=TenantQuota(max_stored_mb=1), stored_bytes=lambda _: 2**20)
    with pytest.raises(QuotaExceeded, match="max_stored_mb"):
        async with admission.slot("acme"):
            pytest.fail("ran at max_stored_mb")


async def test_a_freed_slot_goes_to_the_tenant_with_the_fewest_frames_running():
    admission = Admission(slots=2, queue=8, quota=UNLIMITED)
    async with anyio.create_task_group() as tasks:
        frames = Frames(admission, tasks)
        finish = {}
        for label in ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]:  # a1, a2 run; a3..a7 wait
            finish[label] = frames.send("acme", label)
            await settle()
        finish["b1"] = frames.send("beta", "b1")
        await settle()
        assert admission.snapshot() == {"acme": TenantLoad(2, 5), "beta": TenantLoad(0, 1)}
        finish["a1"].set()
        await settle()
        assert frames.started == ["a1", "a2", "b1"]  # beta's frame came last but runs before acme's waiters
        finish["a2"].set()
        await settle()
        assert frames.started[-1] == "a3"  # within a tenant, first come first served
        finish["b1"].set()
        await settle()
        assert frames.started[-1] == "a4"
        assert admission.snapshot() == {"acme": TenantLoad(2, 3)}
        for event in finish.values():
            event.set()
    assert frames.started == ["a1", "a2", "b1", "a3", "a4", "a5", "a6", "a7"]


async def test_the_reserved_slots_start_another_tenants_frame_at_once():
    admission = Admission(slots=3, queue=8, quota=UNLIMITED, reserve=1)
    async with anyio.create_task_group() as tasks:
        frames = Frames(admission, tasks)
        finish = {label: frames.send("acme", label) for label in ["a1", "a2", "a3"]}
        await settle()
        assert frames.started == ["a1", "a2"]  # a3 waits with a slot free: the reserve
        assert admission.snapshot() == {"acme": TenantLoad(2, 1)}
        finish["b1"] = frames.send("beta", "b1")
        await settle()
        assert frames.started == ["a1", "a2", "b1"]  # beta runs nothing yet: it takes the reserve at once
        finish["c1"] = frames.send("gamma", "c1")
        await settle()
        assert "c1" not in frames.started  # no slot free: it waits, ahead of acme's waiter
        finish["a1"].set()
        await settle()
        assert frames.started[-1] == "c1"
        finish["b1"].set()
        await settle()
        assert frames.started[-1] == "c1"  # the freed slot is the reserve: acme, running a2, may not take it
        finish["a2"].set()
        await settle()
        assert frames.started[-1] == "a3"  # acme runs nothing now: a3 may start
        for event in finish.values():
            event.set()


async def test_ties_go_to_the_tenant_whose_oldest_waiter_came_first():
    admission = Admission(slots=1, queue=8, quota=UNLIMITED)
    async with anyio.create_task_group() as tasks:
        frames = Frames(admission, tasks)
        finish = {}
        for tenant, label in [("gamma", "g1"), ("beta", "b1"), ("acme", "a1"), ("beta", "b2")]:
            finish[label] = frames.send(tenant, label)
            await settle()
        finish["g1"].set()  # beta and acme both run none: beta's b1 waited longest
        await settle()
        assert frames.started == ["g1", "b1"]
        finish["b1"].set()
        await settle()
        assert frames.started == ["g1", "b1", "a1"]  # now beta runs none and acme none: acme's a1 came first
        for event in finish.values():
            event.set()


async def test_a_cancelled_waiter_leaves_the_queue_and_no_slot_leaks():
    admission = Admission(slots=1, queue=2, quota=UNLIMITED)
    async with admission.slot("acme"), anyio.create_task_group() as tasks:
        scope = anyio.CancelScope()
        tasks.start_soon(_wait_in, admission, "beta", scope)
        await settle()
        assert admission.snapshot() == {"acme": TenantLoad(1, 0), "beta": TenantLoad(0, 1)}
        scope.cancel()
        await settle()
        assert (admission.running, admission.waiting) == (1, 0)
    assert (admission.running, admission.waiting, admission.snapshot()) == (0, 0, {})
    async with admission.slot("beta"):  # all slots can be taken again
        assert admission.running == 1


async def _wait_in(admission: Admission, tenant: str, scope: anyio.CancelScope) -> None:
    with scope:
        async with admission.slot(tenant):
            pytest.fail("a cancelled waiter ran")


async def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on():
    """The slot is handed to beta's waiter and the waiter is cancelled before it wakes (an asyncio
    task cancelled at once, as a client gone away is): beta never runs and gamma gets the slot."""
    admission = Admission(slots=1, queue=4, quota=UNLIMITED)
    ran: list[str] = []

    async def frame(tenant: str, finish: asyncio.Event) -> None:
        async with admission.slot(tenant):
            ran.append(tenant)
            await finish.wait()

    holding = admission.slot("acme")
    await holding.__aenter__()
    finish = asyncio.Event()
    beta = asyncio.create_task(frame("beta", finish))
    await settle()
    gamma = asyncio.create_task(frame("gamma", finish))
    await settle()
    assert admission.snapshot() == {"acme": TenantLoad(1, 0), "beta": TenantLoad(0, 1), "gamma": TenantLoad(0, 1)}
    await holding.__aexit__(None, None, None)  # hands the slot to beta's waiter ...
    assert admission.snapshot() == {"beta": TenantLoad(1, 0), "gamma": TenantLoad(0, 1)}
    beta.cancel()  # ... which is cancelled before it wakes
    await settle()
    assert beta.cancelled() and ran == ["gamma"]
    assert admission.snapshot() == {"gamma": TenantLoad(1, 0)}
    finish.set()
    await gamma
    assert (admission.running, admission.waiting) == (0, 0)


async def test_an_error_in_the_frame_gives_its_slot_back():
    admission = Admission(slots=1, queue=0, quota=UNLIMITED)
    with pytest.raises(RuntimeError, match="backend failed"):
        async with admission.slot("acme"):
            raise RuntimeError("backend failed")
    assert (admission.running, admission.snapshot()) == (0, {})
    async with admission.slot("acme"):
        assert admission.running == 1


async def test_a_named_tenants_quota_overrides_the_default():
    admission = Admission(
        slots=8, queue=0, quota=TenantQuota(max_in_flight=2), quotas={"acme": TenantQuota(max_in_flight=1)}
    )
    assert admission.quota("acme").max_in_flight == 1 and admission.quota("beta").max_in_flight == 2
    async with admission.slot("acme"), admission.slot("beta"), admission.slot("beta"):
        with pytest.raises(QuotaExceeded, match="tenant 'acme' has 1 frames in flight"):
            async with admission.slot("acme"):
                pytest.fail("acme ran past its own max_in_flight")
        with pytest.raises(QuotaExceeded, match="tenant 'beta' has 2 frames in flight"):
            async with admission.slot("beta"):
                pytest.fail("beta ran past the default max_in_flight")
        assert admission.snapshot() == {"acme": TenantLoad(1, 0), "beta": TenantLoad(2, 0)}


async def test_runs_a_frame_in_a_worker_thread_under_its_slot():
    admission = Admission(slots=1, queue=1, quota=TenantQuota())
    async with admission.slot("acme"):
        result = await anyio.to_thread.run_sync(lambda: admission.running)
    assert result == 1 and admission.running == 0


def test_slots_and_queue_are_checked():
    with pytest.raises(ValueError, match="slots >= 1"):
        Admission(slots=0, queue=0, quota=TenantQuota())
    with pytest.raises(ValueError, match="reserve < slots"):
        Admission(slots=2, queue=0, quota=TenantQuota(), reserve=2)

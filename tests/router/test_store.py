"""The store on SQLite and on a real PostgreSQL server (the ``database`` fixture runs each test on
both): what a reopened store sees, the migrations (a SQLite file written by the router before
Alembic, schema version 4, in ``data/router-v4.sqlite3``, and older layouts), label counts,
retention, and the outbox's claim shared by several routers."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from fmprog.backends import BackendCatalog
from fmprog.contract import ExpiredDecisions, Feedback, FeedbackList, FeedbackListReply, PolicyDecision, PolicySpec
from router.answering import Answerer
from router.feedback import FeedbackHandler
from router.outbox import BATCH, Outbox
from router.policy_client import PolicyRejected, PolicyUnavailable
from router.programs import ProgramRegistry, policy_spec
from router.schemas import FeedbackIn, ProgramCreate
from router.store import SCHEMA_VERSION, ProgramInfo, QualityCounts, Store, StoreVersionError, utc_now
from tests.fakes import Zoo, box
from tests.router.conftest import create, example, feedback_each

V4_FILE = Path(__file__).parent / "data" / "router-v4.sqlite3"
# What data/router-v4.sqlite3 holds (written by the router's store and outbox of schema version 4).
V4_BINARY, V4_OPEN = "e620962fdfa743fd9b91987d1dfccd27", "9b075d4342334f72a518bcdebb42f6a4"
V4_DECISIONS = [
    "004424b2ddea420fb6dc9c8b37d8e21e",  # binary, answered yes, labelled yes
    "95876cf57df04dedb4ba649629598cd7",  # binary, yes, labelled yes
    "5a3d21d0ef4d450cb6642553838dda4b",  # binary, yes, labelled no
    "c87f76f45c8346c0af4afe0e32aac4ae",  # binary, never labelled
    "2229f489b7384bd79133c37926f47bb9",  # open, labelled "blue"
]


def _label(store: Store, decision_id: str, label: str) -> bool:
    return FeedbackHandler(store).feedback(FeedbackIn(decision_id=decision_id, label=label)).result.repeat


def test_a_reopened_store_sees_programs_decisions_and_feedback(database, catalog: BackendCatalog, zoo: Zoo, frame):
    with Store(database) as store:
        programs = ProgramRegistry(store, catalog)
        public = programs.register(create("person_on_bike"))
        deleted = programs.register(create("leftmost_color", kind="open"))
        programs.delete(deleted.id)
        answered = Answerer(programs, zoo.registry()).answer(public.id, frame, None, frame_id="f1")
        first = FeedbackHandler(store).feedback(FeedbackIn(decision_id=answered.decision_id, label="no")).result

    with Store(database) as store:
        assert store.list_programs() == [public]
        decision = store.get_frame(answered.decision_id)
        assert decision.status == "resolved" and decision.frame_id == "f1" and decision.trace == answered.trace
        assert store.get_feedback(answered.decision_id).reward == first.reward
        again = FeedbackHandler(store).feedback(FeedbackIn(decision_id=answered.decision_id, label="no")).result
        assert again.repeat and again.reward == first.reward


def test_a_reopened_store_reads_a_program_s_name(database, catalog: BackendCatalog):
    with Store(database) as store:
        programs = ProgramRegistry(store, catalog)
        request = ProgramCreate.model_validate(
            {"source": example("person_on_bike"), "kind": "binary", "name": "Bikes at gate 3"}
        )
        named = programs.register(request)
        unnamed = programs.register(create("leftmost_color", kind="open"))
    with Store(database) as store:
        assert store.get_program(named.id).name == "Bikes at gate 3" and store.get_program(unnamed.id).name is None
        assert store.list_programs() == [named, unnamed]
        assert store.program_info() == [
            ProgramInfo(named.id, "Bikes at gate 3", "default"),
            ProgramInfo(unnamed.id, None, "default"),
        ]


def test_a_sqlite_store_uses_wal_and_records_its_revision(db_path: Path):
    Store(db_path).close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0009",)]
        columns = {row[1]: row[2] for row in db.execute("PRAGMA table_info(decisions)")}
        assert columns["propensity"] == "FLOAT" and columns["policy_decision"] == "TEXT" and columns["reuse"] == "TEXT"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"streams", "stream_events", "stream_dead_letters"} <= tables


def test_a_version_4_file_is_migrated_forward_with_everything_in_it(tmp_path: Path, catalog: BackendCatalog, zoo):
    path = tmp_path / "router.sqlite3"
    shutil.copy(V4_FILE, path)
    with Store(path) as store:
        assert [p.id for p in store.list_programs()] == [V4_BINARY, V4_OPEN]
        assert [p.name for p in store.list_programs()] == [None, None]  # registered before names
        assert [a.id for a in store.list_frames(limit=10)] == V4_DECISIONS
        assert [store.get_frame(d).status for d in V4_DECISIONS] == ["resolved"] * 3 + ["answered", "resolved"]
        assert store.get_feedback(V4_DECISIONS[2]).label == "no"
        # decided before propensities were logged: none, and no policy decision to evaluate
        assert all(store.get_frame(d).propensity is None for d in V4_DECISIONS)
        assert store.get_frame(V4_DECISIONS[0]).policy_decision is None
        cached = store.get_synthesized("is there a bike", "binary", "v1", "model")
        assert cached.attempts == 2 and cached.warnings == []  # cached before synthesis warnings
        [letter] = store.list_dead_letters()
        assert (letter.id, letter.kind, letter.program_id, letter.attempts) == (1, "delete", V4_OPEN, 3)
        outbox = Outbox(store)
        assert outbox.pending() == 2 and outbox.pending(V4_BINARY) == 2
        # the labels already given are counted: the binary program's yes/yes/no on answers of yes
        quality = store.quality()
        assert quality[V4_BINARY] == QualityCounts(right=2, wrong=1, tp=2, fp=1)
        assert quality[V4_OPEN].right + quality[V4_OPEN].wrong == 1
        # the store goes on where the file left off: a new label, a repeat, a conflict, a new program
        assert _label(store, V4_DECISIONS[3], "no") is False
        assert _label(store, V4_DECISIONS[0], "yes") is True
        with pytest.raises(Exception, match="already has label"):
            _label(store, V4_DECISIONS[0], "no")
        assert store.quality()[V4_BINARY] == QualityCounts(right=2, wrong=2, tp=2, fp=2)
        added = ProgramRegistry(store, catalog).register(create("person_on_bike"))
        assert store.list_programs()[-1] == added
    with sqlite3.connect(path) as db:  # a router from before Alembic refuses the migrated file
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_store_is_migrated_and_keeps_its_programs(tmp_path: Path, version: int, catalog: BackendCatalog):
    path = tmp_path / "router.sqlite3"
    shutil.copy(V4_FILE, path)
    with Store(":memory:") as scratch:
        public = ProgramRegistry(scratch, catalog).register(create("person_on_bike"))
    columns = ["id", "source", "digest", "kind", "lambda", "algorithm", "call_sites", "created_at"]
    if version >= 2:  # version 2 added hyperparameters, version 3 query and synthesis, 4 the dead letters
        columns.append("hyperparameters")
    if version >= 3:
        columns += ["query", "synthesis"]
    with sqlite3.connect(path) as db:  # back to the older layout
        db.execute("DROP TABLE policy_dead_letters")
        db.execute(f"CREATE TABLE old AS SELECT {', '.join(columns)} FROM programs")
        db.execute("DROP TABLE programs")
        db.execute("ALTER TABLE old RENAME TO programs")
        db.execute("UPDATE schema_version SET version = ?", (version,))
    with Store(path) as migrated:
        assert [p.id for p in migrated.list_programs()] == [V4_BINARY, V4_OPEN]
        assert migrated.count_dead_letters() == 0
        migrated.add_program(public)
        assert migrated.get_program(public.id) == public
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path, database):
    legacy = tmp_path / "legacy.sqlite3"
    shutil.copy(V4_FILE, legacy)
    with sqlite3.connect(legacy) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreVersionError, match="version 99"):
        Store(legacy)
    Store(database).close()  # a database a newer router migrated further
    with Store(database) as store, store.transaction() as db:
        db.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(StoreVersionError, match="f00d"):
        Store(database)


def test_other_connections_and_processes_see_committed_rows(programs: ProgramRegistry, database):
    public = programs.register(create("person_on_bike"))
    with Store(database) as other:
        assert other.get_program(public.id) == public
    script = f"from router.store import Store; print([p.id for p in Store({str(database)!r}).list_programs()])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == str([public.id])


def test_a_failed_write_leaves_nothing_behind(programs: ProgramRegistry, store: Store):
    public = programs.register(create("person_on_bike"))
    with pytest.raises(sa.exc.IntegrityError):
        store.add_program(public)  # the same id twice
    assert store.list_programs() == [public]
    second = programs.register(create("leftmost_color", kind="open"))  # the store still writes
    assert [p.id for p in store.list_programs()] == [public.id, second.id]


def test_labels_are_counted_once_per_decision(programs, answerer, store: Store, zoo, frame):
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")  # the program answers yes
    binary = programs.register(create("person_on_bike"))
    said = [answerer.answer(binary.id, frame, None).decision_id for _ in range(4)]
    assert store.quality() == {}
    for decision_id, label in zip(said, ["yes", "yes", "no", "no"], strict=True):
        assert _label(store, decision_id, label) is False
        assert _label(store, decision_id, label) is True  # a repeat is not counted again
    assert store.quality() == {binary.id: QualityCounts(right=2, wrong=2, tp=2, fp=2)}


def test_labelled_answers_come_newest_first_with_their_labels_propensities_and_decisions(
    programs, answerer, store: Store, frame
):
    program = programs.register(create("person_on_bike"))
    other = programs.register(create("person_on_bike", algorithm="random"))
    answers = [answerer.answer(program.id, frame, None) for _ in range(4)]
    assert all(a.propensity == 1.0 for a in answers)  # the fallback decides without chance
    decision = PolicyDecision(
        algorithm="random", backends=answers[0].decision, propensities={"exists@3:23": {"detect-small": 0.5}}
    )
    run = answerer.run(
        program, programs.compiled(program.id)[1], frame, answerer.fixed_decision(program, answers[0].decision)
    )
    run = run.model_copy(update={"propensity": 0.125, "policy_decision": decision})
    answerer.record(run)
    answerer.answer(other.id, frame, None)  # another program's, labelled: not read
    labels = {answers[1].decision_id: "yes", answers[3].decision_id: "no", run.id: "yes"}
    for decision_id, label in labels.items():
        FeedbackHandler(store).feedback(FeedbackIn(decision_id=decision_id, label=label))
    FeedbackHandler(store).feedback(FeedbackIn(decision_id=store.list_frames(other.id)[0].id, label="no"))

    read = store.labelled_frames(program.id, 10)
    assert [(a.id, f.label) for a, f in read] == [
        (run.id, "yes"),
        (answers[3].decision_id, "no"),
        (answers[1].decision_id, "yes"),
    ]
    assert read[0][0].propensity == 0.125 and read[0][0].policy_decision == decision
    assert read[1][0].propensity == 1.0 and read[1][0].policy_decision is None and read[1][0].fallback
    assert read[0][1].reward == store.get_feedback(run.id).reward
    assert [a.id for a, _ in store.labelled_frames(program.id, 2)] == [run.id, answers[3].decision_id]


def test_retention_prunes_old_decisions_and_their_feedback_and_keeps_the_counts(programs, answerer, store, frame):
    public = programs.register(create("person_on_bike"))
    old = [answerer.answer(public.id, frame, None).decision_id for _ in range(3)]
    _label(store, old[0], "yes")
    cutoff = utc_now()
    kept = answerer.answer(public.id, frame, None).decision_id
    _label(store, kept, "no")
    counts = store.quality()

    pruned = store.prune(cutoff, batch=2)  # in two batches
    assert (pruned.decisions, pruned.feedback) == (3, 1)
    assert [a.id for a in store.list_frames()] == [kept] and store.count_feedback() == 1
    assert store.quality() == counts and store.list_programs() == [programs.get(public.id)]
    assert store.prune(cutoff).decisions == 0
    assert store.prune(utc_now() + timedelta(seconds=1)).decisions == 1


class _Policy:
    """A policy port that records what reaches it, and each request (``requests``: its kind,
    program and what it carried; feedback lists only); ``down`` makes it unavailable, ``refuse``
    refuse (decision ids, or programs it does not know), ``no_lists`` refuse lists of feedback."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str, list[str]]] = []
        self.lock = threading.Lock()
        self.down = False
        self.refuse: set[str] = set()
        self.gate: threading.Event | None = None
        self.no_lists = False  # a policy older than the list route

    def _got(self, kind: str, program_id: str, what: str) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        if self.down:
            raise PolicyUnavailable("down")
        if what in self.refuse or program_id in self.refuse:
            raise PolicyRejected("404", f"no policy for {what}")
        with self.lock:
            self.received.append((kind, program_id, what))

    def register(self, program_id: str, spec: PolicySpec) -> None:
        self._got("register", program_id, program_id)

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        self._got("feedback", program_id, feedback.decision_id or "")

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        if program_id in self.refuse or self.no_lists:  # the whole list refused
            raise PolicyRejected("404", f"no policy for {program_id}" if program_id in self.refuse else "Not Found")
        reply = feedback_each(self.feedback, program_id, batch)
        with self.lock:
            self.requests.append(("feedback", program_id, [f.decision_id or "" for f in batch.feedback]))
        return reply

    def expire(self, program_id: str, expired: ExpiredDecisions) -> None:
        self._got("expire", program_id, ",".join(expired.decision_ids))
        with self.lock:
            self.requests.append(("expire", program_id, expired.decision_ids))

    def delete(self, program_id: str) -> None:
        self._got("delete", program_id, program_id)


def _feedback(decision_id: str) -> Feedback:
    return Feedback(decision_id=decision_id, reward=1.0, executed_sites=[], costs={})


def test_the_outbox_delivers_in_order_stops_when_down_and_keeps_refusals(store: Store, programs):
    public = programs.register(create("person_on_bike"))
    outbox, policy = Outbox(store), _Policy()
    outbox.put("register", "p1", policy_spec(public))
    outbox.put("feedback", "p1", _feedback("d1"))
    outbox.put("feedback", "p1", _feedback("d2"))
    policy.down = True
    assert outbox.deliver(policy) == 0 and outbox.pending() == 3
    policy.down, policy.refuse = False, {"d1"}
    dead: list[str] = []
    assert outbox.deliver(policy, dead.append) == 2 and outbox.pending() == 0
    assert policy.received == [("register", "p1", "p1"), ("feedback", "p1", "d2")] and dead == ["feedback"]
    assert policy.requests == [("feedback", "p1", ["d1", "d2"])]  # the two labels in one request
    [letter] = store.list_dead_letters()
    assert letter.payload["decision_id"] == "d1" and letter.attempts == 0  # only the first was tried while down


def test_a_programs_feedback_goes_in_batches_that_never_pass_its_other_messages(store: Store):
    """Consecutive feedback of a program goes in one request, at most BATCH; a program's other
    message ends a batch (what follows it waits for it), and another program's feedback goes in
    a batch of its own, each message once, in order per program."""
    outbox, policy = Outbox(store), _Policy()
    first = [f"d{i}" for i in range(BATCH + 6)]
    for decision_id in first:
        outbox.put("feedback", "p1", _feedback(decision_id))
    for decision_id in ("e0", "e1", "e2"):
        outbox.put("feedback", "p2", _feedback(decision_id))
    outbox.put("expire", "p1", ExpiredDecisions(decision_ids=["x0"]))
    outbox.put("feedback", "p1", _feedback("d-after"))
    assert outbox.deliver(policy) == len(first) + 5 and outbox.pending() == 0
    assert policy.requests == [
        ("feedback", "p1", first[:BATCH]),
        ("feedback", "p1", first[BATCH:]),
        ("feedback", "p2", ["e0", "e1", "e2"]),
        ("expire", "p1", ["x0"]),
        ("feedback", "p1", ["d-after"]),
    ]


def test_of_a_batch_only_what_the_policy_refuses_is_dead_lettered(store: Store):
    """The policy refuses one label of a batch: that one becomes a dead letter, the others are
    delivered in the same request; a list refused as a whole (its program unknown) is a dead
    letter per label. While the policy is down each message of the batch counts an attempt."""
    outbox, policy = Outbox(store), _Policy()
    for i in range(5):
        outbox.put("feedback", "p1", _feedback(f"d{i}"))
    policy.down = True
    assert outbox.deliver(policy) == 0 and outbox.pending() == 5
    policy.down, policy.refuse = False, {"d2"}
    dead: list[str] = []
    assert outbox.deliver(policy, dead.append) == 4 and outbox.pending() == 0
    assert policy.requests == [("feedback", "p1", ["d0", "d1", "d2", "d3", "d4"])]
    assert [what for _, _, what in policy.received] == ["d0", "d1", "d3", "d4"] and dead == ["feedback"]
    [letter] = store.list_dead_letters()
    assert letter.payload["decision_id"] == "d2" and letter.reason == "no policy for d2" and letter.attempts == 1

    for i in range(3):
        outbox.put("feedback", "gone", _feedback(f"g{i}"))
    policy.refuse = {"gone"}  # each list refused as a whole, then each label on its own
    assert outbox.deliver(policy, dead.append) == 0 and outbox.pending() == 0 and dead == ["feedback"] * 4
    assert [letter.payload["decision_id"] for letter in store.list_dead_letters()] == ["d2", "g0", "g1", "g2"]


def test_labels_reach_a_policy_without_the_list_route_one_by_one(store: Store):
    """A policy that refuses lists of feedback as a whole (one older than the list route) still
    learns every label, each sent on its own, in order; none is taken for refused."""
    outbox, policy = Outbox(store), _Policy()
    for i in range(4):
        outbox.put("feedback", "p1", _feedback(f"d{i}"))
    policy.no_lists = True
    dead: list[str] = []
    assert outbox.deliver(policy, dead.append) == 4 and outbox.pending() == 0 and dead == []
    assert [what for _, _, what in policy.received] == ["d0", "d1", "d2", "d3"] and policy.requests == []


def test_routers_sharing_postgresql_claim_each_message_once_in_order_per_program(postgres_server):
    """Four outboxes (four routers) deliver 200 messages of 5 programs at once: each message is
    sent once, and each program's messages in the order they were queued."""
    url = postgres_server.database()
    stores = [Store(url) for _ in range(4)]
    try:
        outboxes = [Outbox(store) for store in stores]
        expected: dict[str, list[str]] = {}
        for i in range(200):
            program = f"p{i % 5}"
            outboxes[i % 4].put("feedback", program, _feedback(f"d{i}"))
            expected.setdefault(program, []).append(f"d{i}")
        policy = _Policy()
        policy.gate = threading.Event()
        threads = [threading.Thread(target=outbox.deliver, args=(policy,)) for outbox in outboxes for _ in range(2)]
        for thread in threads:
            thread.start()
        policy.gate.set()
        for thread in threads:
            thread.join(60)
        delivered = [what for _, _, what in policy.received]
        assert sorted(delivered) == sorted(f"d{i}" for i in range(200))  # every message, none twice
        for program, order in expected.items():
            assert [what for _, p, what in policy.received if p == program] == order
        assert outboxes[0].pending() == 0
        assert len(policy.requests) < 200  # a program's waiting labels went together
    finally:
        for store in stores:
            store.close()


def test_a_router_killed_while_delivering_leaves_its_message_to_the_others(postgres_server):
    """A claim lasts as long as its transaction: a process killed mid-delivery releases its whole batch."""
    url = postgres_server.database()
    with Store(url) as store:
        for i in range(3):
            Outbox(store).put("feedback", "p", _feedback(f"d{i}"))
        script = (
            "import os, signal\n"
            "from router.outbox import Outbox\nfrom router.store import Store\n"
            "class Dying:\n"
            "    def feedback_batch(self, program_id, batch):\n"
            "        print('claimed', len(batch.feedback), flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"Outbox(Store({url!r})).deliver(Dying())\n"
        )
        died = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
        assert died.returncode == -9 and "claimed 3" in died.stdout, died.stderr
        policy = _Policy()
        assert Outbox(store).deliver(policy) == 3 and policy.requests == [("feedback", "p", ["d0", "d1", "d2"])]

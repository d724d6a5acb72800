"""Two router processes on one PostgreSQL database with one policy process: frames and feedback
streamed to both at once, one router killed with SIGKILL mid-stream, the clients going on with the
other. Every acknowledged label reaches the policy exactly once, the label counters (which every
router reads from the database) add up to the frames answered, and no frame is answered twice."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.router_replicas import Service, frame, register, start_policy, start_router, stopping
from router.outbox import BATCH
from router.store import Store
from tests.postgres import PostgresServer, serving_or_skipped

pytestmark = pytest.mark.timeout(600)
FRAMES = 160
CLIENTS = 6


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    yield from serving_or_skipped()


def _samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def _wait_for(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.2)


class Stream:
    """What the clients saw: acknowledged answers (by decision), labels, and which router answered."""

    def __init__(self, routers: list[Service], program_id: str):
        self.routers = routers
        self.program_id = program_id
        self.lock = threading.Lock()
        self.frames = iter(range(FRAMES))
        self.answers: dict[str, dict] = {}  # decision id -> the answer acknowledged
        self.answered_frames: list[str] = []
        self.answered_by: Counter[str] = Counter()
        self.labels: dict[str, str] = {}  # decision id -> the label acknowledged
        self.new_labels: Counter[str] = Counter()  # decision id -> acknowledgements that were not repeats
        self.conflicts = 0
        self.refused_on_dead_router = 0
        self.halfway = threading.Event()
        self.dead: set[str] = set()
        self.errors: list[BaseException] = []

    def post(self, client: httpx.Client, first: int, path: str, body: dict) -> tuple[httpx.Response, str]:
        """POST to router ``first`` (mod 2), or to the other when it cannot be reached (killed);
        the reply and the router that gave it."""
        for k in (first, first + 1):
            url = self.routers[k % 2].url
            if url in self.dead:
                continue
            try:
                return client.post(f"{url}{path}", json=body), url
            except httpx.TransportError:
                with self.lock:
                    self.refused_on_dead_router += 1
        raise AssertionError("no router answered")

    def client(self, seed: int) -> None:
        try:
            self._client(seed)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60) as client:
            while True:
                with self.lock:
                    i = next(self.frames, None)
                if i is None:
                    return
                body = {"program_id": self.program_id, "image": frame(i), "frame_id": f"f{i}"}
                reply, router = self.post(client, i, "/answer", body)
                assert reply.status_code == 200, reply.text
                answer = reply.json()
                decision = answer["decision_id"]
                label = rng.choice(["yes", "no"])
                with self.lock:
                    assert decision not in self.answers
                    self.answers[decision] = answer
                    self.answered_frames.append(answer["frame_id"])
                    self.answered_by[router] += 1
                    if len(self.answers) == FRAMES // 2:
                        self.halfway.set()
                # the label goes to the other router, then again to the first (a repeat), and the
                # opposite label to either (a conflict)
                for k, sent in ((i + 1, label), (i, label), (i + rng.randrange(2), "no" if label == "yes" else "yes")):
                    reply, _ = self.post(client, k, "/feedback", {"decision_id": decision, "label": sent})
                    if sent != label:
                        assert reply.status_code == 409, reply.text
                        with self.lock:
                            self.conflicts += 1
                        continue
                    assert reply.status_code == 200, reply.text
                    with self.lock:
                        self.labels[decision] = label
                        self.new_labels[decision] += not reply.json()["repeat"]


def test_two_routers_one_killed_mid_stream_lose_nothing_and_count_everything_once(postgres, tmp_path: Path):
    database = postgres.database()
    policy = start_policy(tmp_path / "policy")
    with stopping(policy):
        # a policy decision may wait seconds for a core on a busy machine: a generous timeout keeps
        # the decisions the policy's (a fallback decision's label is not sent to the policy)
        options = {"outbox_retry_s": "0.2", "policy_timeout_s": "30"}
        a = start_router(database, policy.url, tmp_path / "a.log", **options)
        b = start_router(database, policy.url, tmp_path / "b.log", **options)
        with stopping(a, b):
            program_id = register(a.url)
            stream = Stream([a, b], program_id)
            clients = [threading.Thread(target=stream.client, args=(seed,)) for seed in range(CLIENTS)]
            for thread in clients:
                thread.start()
            while not stream.halfway.wait(0.2):
                assert not stream.errors and any(t.is_alive() for t in clients), stream.errors
            b.kill()  # mid-stream: other clients have requests in flight to it
            stream.dead.add(b.url)
            for thread in clients:
                thread.join(300)
            assert not any(thread.is_alive() for thread in clients) and not stream.errors, stream.errors

            # nothing answered twice: each frame acknowledged once, with its own decision
            assert len(stream.answers) == FRAMES and sorted(stream.answered_frames) == sorted(
                f"f{i}" for i in range(FRAMES)
            )
            # each label is one event, however many routers it was sent to
            assert set(stream.labels) == set(stream.answers)
            assert all(stream.new_labels[d] <= 1 for d in stream.answers)
            assert stream.conflicts == FRAMES

            # every acknowledged label reached the policy exactly once (the outbox drained)
            _wait_for(lambda: httpx.get(f"{a.url}/readyz").json()["policy_outbox"] == 0, "the outbox did not drain")
            learned = [d for d, answer in stream.answers.items() if not answer["fallback"]]
            assert len(learned) > FRAMES // 2  # the policy decided most frames
            info = httpx.get(f"{policy.url}/policies/{program_id}").json()
            assert info["observed"] == len(learned), info
            feedback = _samples(policy.url, "fmprog_policy_feedback_total")
            assert feedback[(("outcome", "new"), ("program", program_id))] == len(learned)
            # the labels the killed router had sent but not yet deleted are sent again by the other,
            # and the policy takes them as repeats: at most one batch (its one delivery in flight)
            assert feedback.get((("outcome", "repeat"), ("program", program_id)), 0) <= BATCH
            assert httpx.get(f"{a.url}/readyz").json()["policy_dead_letters"] == 0

            # the counters add up to the frames answered, whichever router took each label
            labels = _samples(a.url, "fmprog_program_labels_total")
            right = sum(stream.answers[d]["answer"] == label for d, label in stream.labels.items())
            assert labels[(("outcome", "right"), ("program", program_id))] == right
            assert labels[(("outcome", "wrong"), ("program", program_id))] == FRAMES - right
            binary = _samples(a.url, "fmprog_program_binary_labels_total")
            assert sum(v for k, v in binary.items() if ("program", program_id) in k) == FRAMES
            said_yes = {d for d, answer in stream.answers.items() if answer["answer"] == "yes"}
            tp = sum(stream.labels[d] == "yes" for d in said_yes)
            assert binary[(("outcome", "tp"), ("program", program_id))] == tp
            # the surviving router counted exactly the answers it acknowledged
            answered = _samples(a.url, "fmprog_answers_total")
            mine = sum(v for k, v in answered.items() if ("program", program_id) in k)
            assert mine == stream.answered_by[a.url] and stream.answered_by[b.url] > 0

    with Store(database) as store:  # what the database holds: every answer, every label once
        assert store.count_feedback() == FRAMES
        kept = {answer.id for answer in store.list_frames(program_id, limit=1000)}
        assert set(stream.answers) <= kept
        assert len(kept) - FRAMES <= stream.refused_on_dead_router  # frames lost with the killed router's replies

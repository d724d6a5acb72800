"""A track's queries through the HTTP services (router, policy, Ray Serve backends), to show that
the in-process replay and the deployed system agree.

``replay_over_http`` registers a query's program with the router, then for each frame asks for an
answer and sends the label back, exactly as a client of the system would. ``compare`` lines its
outcomes up with the in-process replay's: the same answer, the same backends invoked, the same
cost, frame by frame. Deterministic policies (static programs, and ``fast``, whose update is
closed-form) must agree on every frame. The replay learns each label before the next frame; the
router delivers labels to the policy in the background, so after each label the client waits
until the router's outbox is empty (the policy has learned it) before it sends the next frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from benchmarks.vqa.harness import Outcome, ReplaySetup
from benchmarks.vqa.tracks import ImageResolver, TrackQuery
from fmprog.images import encode_base64_png


@dataclass(frozen=True, slots=True)
class Answered:
    """What the router said for one frame."""

    answer: str
    cost: float
    backends: tuple[str, ...]
    fallback: bool


def replay_over_http(
    client: httpx.Client,
    query: TrackQuery,
    kind: str,
    images: ImageResolver,
    *,
    algorithm: str,
    lam: float,
    hyperparameters: dict[str, Any] | None = None,
) -> list[Answered]:
    """Register the query's program, then answer every frame and send its label back."""
    response = client.post(
        "/programs",
        json={
            "source": query.program,
            "kind": kind,
            "lambda": lam,
            "algorithm": algorithm,
            "hyperparameters": hyperparameters or {},
        },
    )
    response.raise_for_status()
    program_id = response.json()["id"]
    answered = []
    for ref, label in zip(query.frames, query.labels, strict=True):
        reply = client.post("/answer", json={"program_id": program_id, "image": encode_base64_png(images(ref))})
        reply.raise_for_status()
        body = reply.json()
        client.post("/feedback", json={"decision_id": body["decision_id"], "label": label}).raise_for_status()
        _wait_until_delivered(client)
        answered.append(
            Answered(
                answer="" if body["answer"] is None else str(body["answer"]),
                cost=float(body["cost"]),
                backends=tuple(i["backend"] for i in body["trace"]),
                fallback=bool(body["fallback"]),
            )
        )
    return answered


def _wait_until_delivered(client: httpx.Client, timeout_s: float = 30.0) -> None:
    """Block until the router's outbox is empty: every label it took has reached the policy."""
    deadline = time.monotonic() + timeout_s
    while (pending := client.get("/readyz").json().get("policy_outbox", 0)) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} policy messages still undelivered after {timeout_s:g} s")
        time.sleep(0.005)


def compare(in_process: Sequence[Outcome], over_http: Sequence[Answered]) -> dict[str, float]:
    """The fraction of frames on which both gave the same answer, invoked the same backends in the
    same order, and cost the same; and how many HTTP answers were fallbacks."""
    if len(in_process) != len(over_http):
        raise ValueError(f"{len(in_process)} in-process outcomes against {len(over_http)} HTTP answers")
    n = len(in_process)
    return {
        "frames": n,
        "same_answer": sum(a.answer == b.answer for a, b in zip(in_process, over_http, strict=True)) / n,
        "same_backends": sum(a.backends == b.backends for a, b in zip(in_process, over_http, strict=True)) / n,
        "same_cost": sum(math.isclose(a.cost, b.cost) for a, b in zip(in_process, over_http, strict=True)) / n,
        "fallbacks": sum(b.fallback for b in over_http),
    }


def agreement(
    client: httpx.Client, query: TrackQuery, kind: str, setup: ReplaySetup, lam: float
) -> list[dict[str, Any]]:
    """One query both ways, for static all-cheapest, static all-largest and ``fast`` at ``lam``:
    a row per policy with :func:`compare`'s fractions. ``setup`` holds the backends the deployed
    system serves, priced as the router prices them."""
    from benchmarks.vqa.harness import REWARD_SCALE, query_outcomes

    local_setup = replace(setup, lambdas=(lam,), policies=("fast",), whole_query=False, random=False)
    _, local, _, _, _ = query_outcomes(query, kind, local_setup)  # type: ignore[arg-type]
    rows = []
    for name, key, algorithm, params in (
        ("static all-cheapest", ("static-small", None), "static", {"mode": "cheapest"}),
        ("static all-largest", ("static-large", None), "static", {"mode": "largest"}),
        (f"fast lambda {lam:g}", ("fast", lam), "fast", {"reward_scale": REWARD_SCALE}),
    ):
        start = time.perf_counter()
        remote = replay_over_http(
            client, query, kind, setup.images, algorithm=algorithm, lam=lam, hyperparameters=params
        )
        rows.append(
            {"query": query.query, "policy": name, **compare(local[key], remote), "http_s": time.perf_counter() - start}
        )
    return rows

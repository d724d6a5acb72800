"""Cost budgets per program and window, over real HTTP between the router and the policy service:
a program that spent its budget is answered with the cheapest backends without asking the policy,
or refused with 429 until the window ends; the spend is kept in the database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router.budgets import budget_state, window_start
from router.schemas import CostBudget
from router.store import Store
from tests.router.test_labels_http import FRAME, answer, cluster, metric, register

pytestmark = pytest.mark.timeout(180)


def test_a_spent_budget_degrades_to_the_cheapest_backends_without_the_policy(tmp_path, zoo):
    with cluster(tmp_path, zoo, fallback="largest") as (client, _):
        probe = register(client)  # what one frame costs under the policy's choices
        cost = answer(client, probe)["cost"]
        program_id = register(client, budget={"cost": 2.5 * cost, "window": "hour"})
        first = [answer(client, program_id) for _ in range(2)]
        spent = sum(a["cost"] for a in first)
        state = client.get(f"/programs/{program_id}").json()["spending"]
        assert state["spent"] == pytest.approx(spent) and state["remaining"] == pytest.approx(
            max(0, 2.5 * cost - spent)
        )
        while client.get(f"/programs/{program_id}").json()["spending"]["remaining"] > 0:
            answer(client, program_id, fallback=None)
        degraded = answer(client, program_id, fallback=True)
        assert set(degraded["decision"].values()) <= {
            "detect-small",
            "vqa-small",
        }  # the cheapest, whatever FALLBACK says
        assert metric(client, "fmprog_fallbacks_total", program=program_id, reason="budget_exhausted") == 1
        assert metric(client, "fmprog_program_budget_remaining", program=program_id) == 0
        state = client.get(f"/programs/{program_id}").json()["spending"]
        assert state["remaining"] == 0 and state["spent"] > 2.5 * cost  # the degraded frame is charged too
        assert client.get(f"/programs/{probe}").json()["spending"] is None  # no budget, no spending
        with Store(tmp_path / "router.db") as store:  # the spend is the database's, for every router
            hour = window_start(CostBudget(cost=1), datetime.now(UTC))
            assert store.spent(program_id, hour) == pytest.approx(state["spent"])


def test_a_spent_budget_refuses_frames_with_429_until_the_window_ends(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, _):
        program_id = register(client, budget={"cost": 1, "window": "day", "exhausted": "refuse"})
        answer(client, program_id)  # costs more than 1: the budget is spent
        refused = client.post("/answer", json={"program_id": program_id, "image": FRAME})
        assert refused.status_code == 429
        assert "spent its budget of 1 cost units per day" in refused.json()["detail"]
        assert 0 < int(refused.headers["retry-after"]) <= 86400
        bad = client.post("/programs", json={"source": "x", "kind": "binary", "budget": {"cost": 0}})
        assert bad.status_code == 422 and "budget.cost" in bad.json()["detail"]


def test_windows_are_utc_hours_or_days():
    now = datetime(2026, 12, 6, 13, 45, 10, tzinfo=UTC)
    hour = budget_state(CostBudget(cost=10), now, spent=4)
    assert (hour.window_start.hour, hour.window_end.hour, hour.remaining) == (13, 14, 6)
    day = budget_state(CostBudget(cost=10, window="day"), now, spent=12)
    assert (day.window_start, day.remaining) == (datetime(2026, 12, 6, tzinfo=UTC), 0)
    assert day.window_end == datetime(2026, 12, 7, tzinfo=UTC)

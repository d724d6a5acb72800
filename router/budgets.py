"""A program's cost budget: what it may spend per window (an hour or a day, in UTC), and what
happens once it has.

Every answer's cost (and its teacher's, when one ran) is added to the program's spend for the
current window in the database, in the transaction that stores it, so every router on one
database sees the same spend. Before a frame is answered the spend is read: once it has reached the
budget the frame is either answered with the cheapest candidates without asking the policy
(``degrade``; a fallback answer, counted as ``budget_exhausted``) or refused with 429 until the
window ends (``refuse``). Frames in flight when the budget runs out are answered, so a window may
end a few frames' cost over its budget.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from router.schemas import BudgetState, CostBudget

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def window_start(budget: CostBudget, now: datetime) -> datetime:
    """The start of the budget's window that holds ``now`` (UTC hours or days)."""
    start = now.replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if budget.window == "day" else start


def budget_state(budget: CostBudget, now: datetime, spent: float) -> BudgetState:
    start = window_start(budget, now)
    return BudgetState(
        window_start=start,
        window_end=start + WINDOWS[budget.window],
        spent=spent,
        remaining=max(0.0, budget.cost - spent),
    )

"""A step and time budget for the evaluations a caller can make a server run (OFREP, explain).

Off by default: an SDK evaluating its own flags pays one thread-local read per loop over a list (a
JsonLogic array operation, a ``contains`` clause) and nothing more. A server runs a caller's evaluation
inside ``limited(steps, seconds)``; each loop spends one step per item it visits, and past either limit
the evaluation raises ``BudgetExceeded``, which the server answers as a refusal naming the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()


class BudgetExceeded(Exception):
    """An evaluation went past its step or time budget (never raised without ``limited``)."""


class _Budget:
    __slots__ = ("deadline", "left", "seconds", "steps")

    def __init__(self, steps: int, seconds: float) -> None:
        self.steps, self.seconds = steps, seconds
        self.left = steps
        self.deadline = time.perf_counter() + seconds

    def spend(self, n: int) -> None:
        self.left -= n + 1
        if self.left < 0:
            raise BudgetExceeded(f"the evaluation needs more than {self.steps} steps (the limit)")
        if time.perf_counter() > self.deadline:
            raise BudgetExceeded(f"the evaluation takes longer than {self.seconds:g} s (the limit)")


@contextmanager
def limited(steps: int, seconds: float) -> Iterator[None]:
    """Evaluations on this thread, inside the block, spend from one budget."""
    outer = getattr(_state, "budget", None)
    _state.budget = _Budget(steps, seconds)
    try:
        yield
    finally:
        _state.budget = outer


def spend(n: int) -> None:
    """Count a loop over `n` items against the thread's budget, if it has one."""
    budget = getattr(_state, "budget", None)
    if budget is not None:
        budget.spend(n)


def check() -> None:
    """Spend one step: for loops of the server's own (one step per flag of a bulk evaluation)."""
    spend(0)


__all__ = ["BudgetExceeded", "check", "limited", "spend"]

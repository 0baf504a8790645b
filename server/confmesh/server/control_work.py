"""Costly work a caller can ask for runs off the delivery loop, bounded per caller and per job.

Flag evaluation for OFREP and the console's explain take caller-supplied contexts (and, for explain,
a caller-supplied flag), so their cost is the caller's to choose. They run here, not on the event
loop that carries every Watch push and health check:

* one worker thread runs them all, so at most one Python thread competes with the event loop for the
  GIL (measured in docs/design.md: one busy thread costs the loop about 5 ms of wakeup lag at p50,
  a second one doubles it and multiplies its p99 by five);
* each job runs under a step and time budget (``confmesh.flags.budget``): past it the job ends with
  ``BudgetExceeded``, which the caller receives as a refusal naming the limit;
* admission is bounded: a caller with ``per_caller`` jobs running or waiting is refused with
  ``ResourceExhausted`` (HTTP 429), and so is everyone while ``queued`` jobs wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from confmesh import errors
from confmesh.flags.budget import limited
from confmesh.server.limits import KeyedCount, lower_thread_priority

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkLimits:
    per_caller: int = 2  # jobs one caller may have running or waiting
    queued: int = 64  # jobs all callers may have running or waiting
    steps: int = 1_000_000  # list items one job may visit (confmesh.flags.budget)
    seconds: float = 1.0  # wall time one job may run
    refusal_delay: float = 0.2  # a refused caller waits this long for its answer (see `refuse`)
    rest: float = 1.0  # the worker rests this many times a job's CPU time before the next (see _budgeted)


class ControlWork:
    def __init__(self, limits: WorkLimits | None = None) -> None:
        self.limits = limits or WorkLimits()
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="confmesh-control", initializer=lower_thread_priority
        )
        self._load = KeyedCount()  # jobs running or waiting, per caller
        self._rest_until = 0.0
        self.refused = 0

    @contextmanager
    def slot(self, caller: str, what: str) -> Iterator[None]:
        """Admit one job of `caller` (ResourceExhausted when over a limit) for the block's duration.

        Taken before a request's body is even read, so a refused request costs the loop nothing more.
        """
        limits, load = self.limits, self._load
        mine = load.of(caller)
        if mine >= limits.per_caller:
            self.refused += 1
            raise errors.ResourceExhausted(
                f"{caller} already has {mine} {what} request(s) running; the limit is "
                f"{limits.per_caller} at once per caller",
                code="too_many_requests",
            )
        if load.total >= limits.queued:
            self.refused += 1
            raise errors.ResourceExhausted(
                f"the server has {load.total} costly requests waiting (the limit); try again shortly",
                code="server_busy",
            )
        load.take(caller)
        try:
            yield
        finally:
            load.release(caller)

    async def refuse(self) -> None:
        """Hold a refusal's answer briefly: a caller that retries at once on a 429 would otherwise turn
        refusals into a flood of their own (each costs the event loop a request's parsing and routing)."""
        await asyncio.sleep(self.limits.refusal_delay)

    async def execute(self, job: Callable[[], T]) -> T:
        """`job()` on the worker thread under the budget (inside a `slot`)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._budgeted, job)

    async def run(self, caller: str, what: str, job: Callable[[], T]) -> T:
        """`slot` and `execute` in one."""
        with self.slot(caller, what):
            return await self.execute(job)

    def _budgeted(self, job: Callable[[], T]) -> T:
        # Duty cycle: after a job that used t seconds of CPU, the next one starts t * rest later. A lone
        # request waits for nothing; a stream of them leaves the cores to delivery part of the time.
        pause = self._rest_until - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        started = time.thread_time()
        try:
            with limited(self.limits.steps, self.limits.seconds):
                return job()
        finally:
            self._rest_until = time.monotonic() + (time.thread_time() - started) * self.limits.rest

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["ControlWork", "WorkLimits"]

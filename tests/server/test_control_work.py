"""Control work, alone: admission per caller and in all, before any work; a budget per job."""

from __future__ import annotations

import threading

import pytest

from confmesh import errors
from confmesh.flags.budget import BudgetExceeded, spend
from confmesh.server.control_work import ControlWork, WorkLimits


async def test_a_caller_gets_its_share_and_everyone_the_rest() -> None:
    work = ControlWork(WorkLimits(per_caller=2, queued=3))
    try:
        with work.slot("a", "explain"), work.slot("a", "explain"):
            with pytest.raises(errors.ResourceExhausted) as mine, work.slot("a", "explain"):
                pass
            assert mine.value.code == "too_many_requests"
            with work.slot("b", "explain"):
                with pytest.raises(errors.ResourceExhausted) as everyone, work.slot("c", "explain"):
                    pass
                assert everyone.value.code == "server_busy"
        with work.slot("a", "explain"):  # released: admitted again
            pass
        assert work.refused == 2
    finally:
        work.close()


async def test_a_job_runs_off_the_loop_under_its_budget() -> None:
    work = ControlWork(WorkLimits(steps=1000, rest=0.0))
    try:
        assert await work.run("a", "explain", threading.get_ident) != threading.get_ident()

        def greedy() -> None:
            spend(10_000)

        with pytest.raises(BudgetExceeded):
            await work.run("a", "explain", greedy)
    finally:
        work.close()

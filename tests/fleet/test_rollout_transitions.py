"""Rollout transitions across replicas: each one etcd transaction, conditioned on the record.

Two replicas decide transitions of one rollout at the same moment (promote against abort,
a new percentage against abort), and a server is SIGKILLed while promoting. Every round must
end consistent: the rollout record and the live service layer agree, and a transition that
lost the race answers FAILED_PRECONDITION, never OK.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from typing import Any

import pytest

from confmesh.client import AdminClient, FailedPrecondition, NotFound
from confmesh.keys import KeyLayout, Scope
from confmesh.server import ConfmeshServer
from confmesh.server.etcd import Etcd
from confmesh.server.rollouts import Rollout
from tests.conftest import EtcdHandle
from tests.fleet.conftest import StartReplicas
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow
SCOPE = Scope("prod", "api")
ROUNDS = 30


@pytest.fixture
async def replicas(fleet: StartReplicas) -> list[ConfmeshServer]:
    return await fleet(2)


async def etcd_truth(endpoint: str, prefix: str) -> tuple[Rollout | None, Any]:
    """The rollout record and the service layer's `pool`, read from etcd itself."""
    layout = KeyLayout(prefix)
    etcd = Etcd([endpoint])
    await etcd.connect()
    try:
        record = await etcd.get(layout.rollout_key(SCOPE))
        pool = await etcd.get(layout.config_key(Rollout("x", SCOPE, {"pool": 1}, 1).layer, "pool"))
    finally:
        await etcd.close()
    return (Rollout.decode(record.value) if record else None), (json.loads(pool.value) if pool else None)


async def outcome(call: Any) -> str:
    try:
        await call
    except FailedPrecondition:
        return "lost"
    except NotFound:
        return "late"  # it read the record after the winner had committed: not a race
    return "ok"


async def test_promote_against_abort_ends_with_one_winner(
    replicas: list[ConfmeshServer], etcd: EtcdHandle, prefix: str
) -> None:
    a, b = (AdminClient(s.address, actor=f"op-{i}") for i, s in enumerate(replicas))
    async with a, b:
        wins = {"promote": 0, "abort": 0}
        for n in range(ROUNDS):
            await a.put("pool", 10, env="prod", service="api")
            started = await a.start_rollout(f"r{n}", "prod", "api", set={"pool": 50}, percent=10)
            await replicas[1].source.wait_for_revision(started.revision, 5)
            promote, abort = await asyncio.gather(
                outcome(a.promote_rollout("prod", "api")), outcome(b.abort_rollout("prod", "api"))
            )
            assert sorted([promote, abort]) in (["lost", "ok"], ["late", "ok"]), (n, promote, abort)
            record, pool = await etcd_truth(etcd.endpoint, prefix)
            if promote == "ok":
                wins["promote"] += 1
                assert record is None and pool == 50, (n, record, pool)
            else:
                wins["abort"] += 1
                assert record is not None and not record.active and pool == 10, (n, record, pool)
                # Aborted means aborted: a later promote finds nothing to promote.
                with pytest.raises(NotFound):
                    await a.promote_rollout("prod", "api")
        assert sum(wins.values()) == ROUNDS


async def test_a_new_percentage_against_abort_never_revives_an_aborted_rollout(
    replicas: list[ConfmeshServer], etcd: EtcdHandle, prefix: str
) -> None:
    a, b = (AdminClient(s.address, actor=f"op-{i}") for i, s in enumerate(replicas))
    async with a, b:
        for n in range(ROUNDS):
            started = await a.start_rollout(f"p{n}", "prod", "api", set={"pool": 50}, percent=10)
            await replicas[1].source.wait_for_revision(started.revision, 5)
            update, abort = await asyncio.gather(
                outcome(a.update_rollout("prod", "api", 50)), outcome(b.abort_rollout("prod", "api"))
            )
            record, _ = await etcd_truth(etcd.endpoint, prefix)
            assert record is not None and record.name == f"p{n}"
            if abort == "ok":
                assert not record.active, (n, update, record)
            else:
                assert abort in ("lost", "late") and update == "ok"
                assert record.active and record.percent == 50
                await a.abort_rollout("prod", "api")
            assert "ok" in (update, abort)


async def test_sigkill_while_promoting_leaves_all_or_nothing(etcd: EtcdHandle, prefix: str) -> None:
    """20 rounds: a promote in flight when its server is SIGKILLed. Afterwards either the change is
    live and the rollout gone, or nothing changed and the rollout is still active; an abort
    then answers truthfully (OK and the value stays, or NotFound)."""
    rng = random.Random(17)
    for n in range(20):
        server = await ServerProcess(etcd.endpoint, prefix).start()
        try:
            async with AdminClient(server.address, actor="op") as admin:
                await admin.put("pool", 10, env="prod", service="api")
                await admin.start_rollout(f"k{n}", "prod", "api", set={"pool": 50}, percent=10)
                promote = asyncio.ensure_future(admin.promote_rollout("prod", "api"))
                await asyncio.sleep(rng.uniform(0, 0.03))
                server.signal(signal.SIGKILL)
                await asyncio.gather(promote, return_exceptions=True)
        finally:
            await server.stop()
        record, pool = await etcd_truth(etcd.endpoint, prefix)
        promoted = record is None
        assert (promoted and pool == 50) or (record is not None and record.active and pool == 10), (
            n, record, pool,
        )  # fmt: skip
        server = await ServerProcess(etcd.endpoint, prefix).start()
        try:
            async with AdminClient(server.address, actor="op") as admin:
                if promoted:
                    with pytest.raises(NotFound):
                        await admin.abort_rollout("prod", "api")
                else:
                    await admin.abort_rollout("prod", "api")
                    assert (await etcd_truth(etcd.endpoint, prefix))[1] == 10
        finally:
            await server.stop()

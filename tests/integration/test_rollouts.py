"""Staged rollouts: a stable canary slice of 200 real clients, promotion, and self-abort on NACKs."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, Field

from confmesh.client import AdminClient, ConfigClient, NotFound
from confmesh.keys import Scope
from confmesh.server import ConfmeshServer
from confmesh.server.rollouts import Rollout
from tests.cli.test_cli import cli

pytestmark = pytest.mark.slow
N = 200


class Api(BaseModel):
    pool: int = Field(ge=1, le=100)


def ids() -> list[str]:
    return [f"api-{i:03d}" for i in range(N)]


async def start_clients(address: str, instance_ids: list[str]) -> dict[str, ConfigClient[Api]]:
    clients = {
        i: ConfigClient(address, environment="prod", service="api", schema=Api, instance_id=i)
        for i in instance_ids
    }
    await asyncio.gather(*(c.start() for c in clients.values()))
    return clients


async def test_a_canary_slice_grows_promotes_and_aborts_itself(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    server.settings.rollout_check_interval = 0.2
    await admin.put("pool", 10, env="prod", service="api")
    clients = await start_clients(server.address, ids())
    try:
        started = await admin.start_rollout("bigger-pool", "prod", "api", set={"pool": 50}, percent=10)
        await asyncio.gather(*(c.wait_for_version(started.revision, timeout=20) for c in clients.values()))
        canaries = {i for i, c in clients.items() if c.config.pool == 50}
        rollout = Rollout("bigger-pool", Scope("prod", "api"), {"pool": 50}, 10)
        assert canaries == {i for i in clients if rollout.includes(i)}
        assert 8 <= len(canaries) <= 34, len(canaries)  # about 10% of 200

        # Reconnecting does not change who is in the slice.
        moved = sorted(canaries)[:5] + sorted(set(clients) - canaries)[:5]
        await asyncio.gather(*(clients[i].close() for i in moved))
        clients.update(await start_clients(server.address, moved))
        assert {i for i, c in clients.items() if c.config.pool == 50} == canaries

        # Widening keeps every earlier canary in the slice.
        wider = await admin.update_rollout("prod", "api", 50)
        await asyncio.gather(*(c.wait_for_version(wider.revision, timeout=20) for c in clients.values()))
        half = {i for i, c in clients.items() if c.config.pool == 50}
        assert canaries < half and 70 <= len(half) <= 130
        code, out, _ = await cli(server.address, "rollout", "status")
        assert code == 0 and "bigger-pool  active  50%" in out and f"canaries {len(half)}:" in out

        promoted = await admin.promote_rollout("prod", "api")
        await asyncio.gather(*(c.wait_for_version(promoted.revision, timeout=20) for c in clients.values()))
        assert all(c.config.pool == 50 for c in clients.values())
        assert await admin.rollouts() == []

        # A bad change: its canaries NACK it and the rollout aborts by itself.
        bad = await admin.start_rollout(
            "huge-pool", "prod", "api", set={"pool": 500}, percent=10, max_nack_rate=0.2
        )

        async def aborted() -> bool:
            (info,) = await admin.rollouts()
            return info.state == "aborted"

        for _ in range(100):
            if await aborted():
                break
            await asyncio.sleep(0.1)
        (info,) = await admin.rollouts()
        assert info.state == "aborted" and info.abort_reason.startswith("auto-abort: ")
        assert info.version > bad.revision
        nacked = {
            i
            for i, c in clients.items()
            if c.last_rejection is not None and c.last_rejection.version == bad.revision
        }
        slice_ = {
            i for i in clients if Rollout("huge-pool", Scope("prod", "api"), {"pool": 500}, 10).includes(i)
        }
        assert nacked == slice_ and nacked
        # Everyone, the canaries included, goes forward to the base config at a newer version.
        await asyncio.gather(*(c.wait_for_version(info.version, timeout=20) for c in clients.values()))
        assert all(c.config.pool == 50 and c.version == info.version for c in clients.values())
        code, out, _ = await cli(server.address, "status")
        assert f"prod/api  version {info.version}: {N} ACKed, 0 NACKed, 0 pending" in out
        with pytest.raises(NotFound, match="no active rollout"):
            await admin.promote_rollout("prod", "api")
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))

"""Concurrent writes: unrelated keys never contend; conflicting ones are still refused."""

from __future__ import annotations

import asyncio

import pytest

from confmesh.client import AdminClient, InvalidArgument
from confmesh.server import ConfmeshServer


async def test_concurrent_writers_to_different_keys_of_one_layer_all_succeed(admin: AdminClient) -> None:
    async def writer(w: int) -> list[int]:
        return [(await admin.put(f"workers.w{w}", n, env="prod")).revision for n in range(10)]

    revisions = await asyncio.gather(*(writer(w) for w in range(16)))
    assert sum(len(r) for r in revisions) == 160
    resolved = await admin.resolve("prod", "api")
    assert resolved.config["workers"] == {f"w{w}": 9 for w in range(16)}


@pytest.mark.parametrize("attempt", range(5))
async def test_racing_conflicting_writes_never_both_land(server: ConfmeshServer, attempt: int) -> None:
    async with AdminClient(server.address) as a, AdminClient(server.address) as b:
        results = await asyncio.gather(
            a.put("limits", 5, env="prod"), b.put("limits.max", 1, env="prod"), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], InvalidArgument)
        assert "is not an object" in failures[0].message
        config = (await a.resolve("prod", "api")).config
        assert config["limits"] in (5, {"max": 1})

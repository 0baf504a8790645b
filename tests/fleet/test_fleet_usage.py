"""`flags stale` and flag usage across replicas: each replica counts what its own streams report,
and any replica answers with every replica's counts, those of a stopped replica included."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from confmesh.client import AdminClient
from confmesh.server import ConfmeshServer
from confmesh.v1 import config_pb2
from tests.cli.test_cli import cli
from tests.fleet.conftest import StartReplicas
from tests.helpers import RawWatch

pytestmark = pytest.mark.slow

HALVES = [{"variant": "on", "percent": 50}, {"variant": "off", "percent": 50}]
SPLIT = {"variants": {"on": True, "off": False}, "default_variant": "off", "off_variant": "off",
         "rules": [{"serve": {"split": HALVES}}]}  # fmt: skip


@pytest.fixture
async def replicas(fleet: StartReplicas) -> list[ConfmeshServer]:
    return await fleet(2, fleet_interval=0.2, usage_publish_interval=0.2)


async def report(address: str, instance: str, counts: list[tuple[str, str, int]]) -> RawWatch:
    watch = RawWatch(address)
    watch.subscribe("prod", "api", instance_id=instance)
    await watch.next_snapshot()
    watch.send(config_pb2.WatchRequest(usage=config_pb2.FlagUsage(
        counts=[config_pb2.FlagUsageCount(flag=f, variant=v, count=n) for f, v, n in counts]
    )))  # fmt: skip
    return watch


async def usage_of(address: str) -> dict[str, dict[str, int]]:
    async with AdminClient(address) as admin:
        resp = await admin.flag_usage("prod")
    return {u.flag: dict(u.variants) for u in resp.flags}


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_a_split_whose_halves_were_seen_by_different_replicas_is_not_stale(
    replicas: list[ConfmeshServer],
) -> None:
    async with AdminClient(replicas[0].address) as admin:
        await admin.put_flags("prod", {"split": {"key": "split", **SPLIT}, "solo": {"key": "solo", **SPLIT}})
    a = await report(replicas[0].address, "a", [("split", "on", 150)])
    b = await report(replicas[1].address, "b", [("split", "off", 150), ("solo", "on", 200)])
    try:
        want = {"split": {"on": 150, "off": 150}, "solo": {"on": 200}}

        async def everywhere() -> bool:
            seen = [await usage_of(r.address) for r in replicas]
            return all(u == want for u in seen)

        await until(everywhere)
        # A flag's evaluations over time count every replica's reports too (the flag page's chart).
        for replica in replicas:
            async with AdminClient(replica.address) as admin:
                series = (await admin.flag_usage("prod", 3600, flag="split")).series
            counted = sum((Counter(dict(b.variants)) for b in series), Counter())
            assert counted == Counter(want["split"]), series
            assert all(time.time() - 180 < b.start.ToSeconds() <= time.time() for b in series)
        for replica in replicas:
            code, out, _ = await cli(replica.address, "flags", "stale", "--env", "prod", "--check")
            assert code == 1, out  # solo is stale: it served one variant, counted on replica 1
            assert "solo" in out and "served only 'on' (200 evaluations" in out
            assert "split" not in out.replace("solo", "")
    finally:
        await a.close()
        await b.close()

    # A replica that stops keeps its counts in the fleet: replica 0 still sees them.
    await replicas[1].stop()
    assert await usage_of(replicas[0].address) == want

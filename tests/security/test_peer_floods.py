"""What a Watch peer may make the server hold: every field capped, memory bounded, answers paged,
logs throttled, and a connect that costs the same whatever the ledger retains."""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import time
from pathlib import Path

import grpc
import pytest

from confmesh.client import AdminClient
from confmesh.keys import Scope
from confmesh.server import ConfmeshServer
from confmesh.server.ledger import Ledger
from confmesh.server.limits import MAX_LABELS, MAX_NACK_ERROR, MAX_VARIANTS_PER_FLAG, PAGE_BYTES
from confmesh.v1 import admin_pb2, config_pb2
from tests.helpers import RawWatch, eventually

pytestmark = pytest.mark.slow
RSS_BOUND_MIB = 48  # growth allowed after each flood (before the caps: +172 MiB for the NACK flood)


def rss_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def nack(snapshot: config_pb2.Snapshot, error: str, paths: int = 0) -> config_pb2.WatchRequest:
    return config_pb2.WatchRequest(nack=config_pb2.Nack(
        version=snapshot.version, hash=snapshot.hash, error=error,
        field_errors=[config_pb2.FieldError(path="p" * 300 + str(i), message="m") for i in range(paths)],
    ))  # fmt: skip


async def test_nack_and_label_floods_stay_bounded_and_status_answers(
    server: ConfmeshServer, admin: AdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.put("x", 1, env="prod", service="orders")
    caplog.set_level(logging.INFO)
    before = rss_mib()
    for i in range(40):
        if i == 10:
            # The allocator keeps what the first floods took (run to run, 10 floods leave
            # 20-60 MiB it may reuse); what must not grow is the rest: 30 floods held in full
            # would add about 130 MiB.
            before = rss_mib()
        watch = RawWatch(server.address)
        watch.send(config_pb2.WatchRequest(subscribe=config_pb2.Subscribe(
            environment="prod", service="orders", instance_id=f"flood-{i}",
            labels={f"label-{j}-{'k' * 80}": "v" * 2000 for j in range(500)},
        )))  # fmt: skip
        snapshot = await watch.next_snapshot()
        watch.send(nack(snapshot, "E" * 3_900_000, paths=500))  # just under the 4 MiB message limit
        await eventually(lambda i=i: any(r.instance_id == f"flood-{i}" and r.last_nack
                                         for r in server.ledger.records()))  # fmt: skip
        await watch.close()
    growth = rss_mib() - before
    assert growth < RSS_BOUND_MIB, f"RSS grew {growth:.0f} MiB"
    status = await admin.status()
    flooded = [i for i in status.instances if i.instance_id.startswith("flood-")]
    assert len(flooded) == 40
    for inst in flooded:
        assert len(inst.last_nack.error) <= MAX_NACK_ERROR and "characters cut]" in inst.last_nack.error
        assert len(inst.last_nack.field_paths) <= 33 and len(inst.labels) <= MAX_LABELS + 1
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert logged < 20_000, f"{logged} characters of log for 40 NACKs"


async def test_a_nack_storm_from_one_stream_writes_a_few_log_lines(
    server: ConfmeshServer, admin: AdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.put("x", 1, env="prod", service="orders")
    caplog.set_level(logging.INFO)
    watch = RawWatch(server.address)
    watch.subscribe("prod", "orders", instance_id="storm")
    snapshot = await watch.next_snapshot()
    for _ in range(20_000):
        watch.send(nack(snapshot, "rejected: " + "x" * 200))
    await eventually(lambda: watch.outbox.empty(), timeout=60)
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    await admin.status()
    assert time.perf_counter() - started < 1
    lines = [r for r in caplog.records if "rejected version" in r.getMessage()]
    assert 1 <= len(lines) <= 3, len(lines)
    await watch.close()


async def test_usage_floods_fold_variants_and_flags_stale_answers(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("x", 1, env="prod", service="orders")
    watch = RawWatch(server.address)
    watch.subscribe("prod", "orders", instance_id="usage")
    await watch.next_snapshot()
    before = rss_mib()
    for batch in range(600):  # 600,000 distinct variants over 10 flags
        counts = [config_pb2.FlagUsageCount(flag=f"f{batch % 10}", variant=f"v{batch}-{i}", count=1)
                  for i in range(1000)]  # fmt: skip
        watch.send(config_pb2.WatchRequest(usage=config_pb2.FlagUsage(counts=counts)))
    await eventually(lambda: watch.outbox.empty(), timeout=60)
    usage = await eventually_usage(admin, 10)
    assert rss_mib() - before < RSS_BOUND_MIB
    for flag in usage.flags:
        assert len(flag.variants) <= MAX_VARIANTS_PER_FLAG + 1 and "(other)" in flag.variants
        assert sum(flag.variants.values()) == 60_000  # nothing lost: the rest is counted as (other)
    code, out, err = await _flags_stale(server)
    assert code == 0, err
    assert "stale flag(s)" in out  # the usage of flags that do not exist does not count, but it answers
    await watch.close()


async def eventually_usage(admin: AdminClient, flags: int) -> admin_pb2.GetFlagUsageResponse:
    for _ in range(200):
        usage = await admin.flag_usage("prod")
        if len(usage.flags) == flags and all(sum(f.variants.values()) == 60_000 for f in usage.flags):
            return usage
        await asyncio.sleep(0.05)
    raise AssertionError(f"usage not recorded: {usage}")


async def _flags_stale(server: ConfmeshServer) -> tuple[int, str, str]:
    from tests.cli.test_cli import cli

    return await cli(server.address, "flags", "stale", "--env", "prod")


async def test_status_is_paged_so_every_answer_fits_a_message(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    # 10,000 retained instances, each with the most text a peer may leave: about 40 MB in all.
    for i in range(10_000):
        server.ledger.connect(
            i + 1_000_000, instance_id=f"i-{i:05d}" + "x" * 240, scope=Scope("prod", "orders"), peer="p",
            labels={f"k{j}": "v" * 256 for j in range(16)}, known_version=0, known_hash="",
        )  # fmt: skip
        server.ledger.nack(i + 1_000_000, 1, "h", "e" * 5000, ["p" * 300] * 40)
        server.ledger.disconnect(i + 1_000_000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        get = channel.unary_unary("/confmesh.v1.AdminService/GetStatus")
        token, pages, seen = "", 0, 0
        while True:
            raw = await get(admin_pb2.GetStatusRequest(page_token=token).SerializeToString())
            assert len(raw) < PAGE_BYTES + 64 * 1024
            page = admin_pb2.GetStatusResponse.FromString(raw)
            pages, seen, token = pages + 1, seen + len(page.instances), page.next_page_token
            if not token:
                break
    assert seen == 10_000 and pages > 10
    assert len((await admin.status()).instances) == 10_000


def _connect_cost(ledger: Ledger, n: int, base: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        ledger.connect(base + i, instance_id=f"new-{base + i}", scope=Scope("prod", "orders"), peer="p",
                       labels={}, known_version=0, known_hash="")  # fmt: skip
        ledger.disconnect(base + i)
    return (time.perf_counter() - started) / n


def test_a_connect_costs_the_same_with_10000_records_retained() -> None:
    empty = statistics.median(_connect_cost(Ledger(), 2000, 0) for _ in range(5))
    full = Ledger()
    _connect_cost(full, 10_000, 10_000_000)
    assert len(full) == 10_000
    retained = statistics.median(_connect_cost(full, 2000, 20_000_000 + k * 10_000) for k in range(5))
    assert len(full) == 10_000  # the oldest records made room
    assert retained < empty * 3, f"{retained * 1e6:.1f} µs vs {empty * 1e6:.1f} µs per connect"


async def test_real_streams_connect_as_fast_with_10000_records_retained(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("x", 1, env="prod", service="orders")

    async def connects(n: int, tag: str) -> float:
        started = time.perf_counter()
        for i in range(n):
            watch = RawWatch(server.address)
            watch.subscribe("prod", "orders", instance_id=f"{tag}-{i}")
            await watch.next_snapshot()
            await watch.close()
        return (time.perf_counter() - started) / n

    empty = await connects(100, "warm")
    empty = min(empty, await connects(100, "before"))
    _connect_cost(server.ledger, 10_000, 30_000_000)
    retained = await connects(100, "after")
    assert retained < empty * 3, f"{retained * 1e3:.1f} ms vs {empty * 1e3:.1f} ms per connect"

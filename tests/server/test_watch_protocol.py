"""The Watch protocol on an in-memory source: a real gRPC server, the real ConfigService and
snapshot plane, no etcd (in the style of go-control-plane's server tests).

Each rule of docs/watch-protocol.md that the server enforces is checked here with a hand-driven
stream: snapshots and ACK/NACK, resume, deltas and need_full, coalescing of a slow stream,
staleness, and the errors that end a stream. tests/integration runs the same paths on real etcd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.rpc_errors import ERROR_DETAIL_KEY
from confmesh.server.config_service import ConfigService, add_config_service
from confmesh.server.ledger import Ledger
from confmesh.server.memory_source import MemorySource
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from confmesh.server.stream_callbacks import LedgerCallbacks
from confmesh.v1 import admin_pb2, config_pb2
from tests.helpers import RawWatch, eventually

LAYOUT = KeyLayout("/mem")
SCOPE = Scope("prod", "orders")


@dataclass
class Served:
    source: MemorySource
    plane: SnapshotPlane
    service: ConfigService
    ledger: Ledger
    address: str

    def put(self, key: str, value: str, layer: Layer | None = None) -> int:
        return self.source.put(LAYOUT.config_key(layer or Layer.env("prod"), key), value.encode())

    def watch(self, **subscribe: object) -> RawWatch:
        watch = RawWatch(self.address)
        watch.subscribe("prod", "orders", **subscribe)  # type: ignore[arg-type]
        return watch


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    store = server_store(LAYOUT)
    plane = SnapshotPlane(store)
    source = MemorySource(store, plane.apply)
    source.put(LAYOUT.config_key(Layer.defaults(), "pool"), b"10")
    source.start()
    ledger = Ledger()
    service = ConfigService(plane, source, [LedgerCallbacks(ledger)], heartbeat_interval=0.3,
                            subscribe_timeout=1.0, catch_up_timeout=0.5)  # fmt: skip
    server = grpc.aio.server()
    add_config_service(service, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield Served(source, plane, service, ledger, address)
    finally:
        await server.stop(None)


def ack(snap: config_pb2.Snapshot) -> config_pb2.WatchRequest:
    return config_pb2.WatchRequest(ack=config_pb2.Ack(version=snap.version, hash=snap.hash))


async def ended_with(watch: RawWatch) -> tuple[grpc.StatusCode, str]:
    """Read until the stream ends; its status code and message."""
    async with asyncio.timeout(5):
        try:
            while await watch.call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass
        return await watch.call.code(), await watch.call.details() or ""


async def test_a_subscribe_gets_the_current_snapshot_and_every_later_one(served: Served) -> None:
    watch = served.watch()
    try:
        first = await watch.next_snapshot()
        assert first.version == 1 and first.config["pool"] == 10
        watch.send(ack(first))
        revision = served.put("pool", "20")
        second = await watch.next_snapshot()
        assert second.version == revision and second.config["pool"] == 20 and second.hash != first.hash
        watch.send(ack(second))
        await eventually(lambda: [r.acked_version for r in served.ledger.records()] == [revision])
    finally:
        await watch.close()


async def test_a_nack_is_recorded_and_that_version_is_not_sent_again(served: Served) -> None:
    watch = served.watch()
    try:
        first = await watch.next_snapshot()
        watch.send(ack(first))
        served.put("pool", '"many"')
        bad = await watch.next_snapshot()
        watch.send(config_pb2.WatchRequest(nack=config_pb2.Nack(version=bad.version, hash=bad.hash,
                                                                 error="pool: not an integer")))  # fmt: skip
        await eventually(lambda: served.ledger.records()[0].last_nack is not None)
        assert served.ledger.records()[0].acked_version == first.version
        # It reports running the old version: the NACKed one is not re-sent...
        watch.send(config_pb2.WatchRequest(report=config_pb2.Report(version=first.version, hash=first.hash)))
        beat = await watch.next_message()
        assert beat.WhichOneof("kind") == "heartbeat"
        # ...the next change is.
        fixed = served.put("pool", "30")
        assert (await watch.next_snapshot()).version == fixed
    finally:
        await watch.close()


async def test_resuming_at_the_current_version_sends_nothing_and_behind_it_the_latest(served: Served) -> None:
    first = served.watch()
    current = await first.next_snapshot()
    await first.close()
    again = served.watch(version=current.version, hash_=current.hash)
    try:
        beat = await again.next_message()
        assert beat.WhichOneof("kind") == "heartbeat"  # already current: said at once, nothing sent
        assert beat.heartbeat.server_revision == current.version
    finally:
        await again.close()
    later = served.put("pool", "11")
    behind = served.watch(version=current.version, hash_=current.hash)
    try:
        assert (await behind.next_snapshot()).version == later
    finally:
        await behind.close()


async def test_a_resuming_client_ahead_of_the_server_is_told_to_go_elsewhere(served: Served) -> None:
    watch = served.watch(version=999, hash_="sha256:x")
    try:
        code, details = await ended_with(watch)
        assert code is grpc.StatusCode.UNAVAILABLE and "behind the client's version 999" in details
    finally:
        await watch.close()


async def test_deltas_follow_the_version_the_client_runs_and_need_full_resets_it(served: Served) -> None:
    watch = served.watch(accept_delta=True)
    try:
        first = await watch.next_snapshot()
        assert not first.HasField("delta")
        watch.send(ack(first))
        served.put("pool", "12")
        delta = await watch.next_snapshot()
        assert delta.HasField("delta") and delta.delta.base_version == first.version
        # The client could not apply it: it asks for the whole snapshot instead of ACK or NACK.
        watch.send(config_pb2.WatchRequest(
            report=config_pb2.Report(version=first.version, hash=first.hash, need_full=True)
        ))  # fmt: skip
        full = await watch.next_snapshot()
        assert full.version == delta.version and not full.HasField("delta") and full.config["pool"] == 12
    finally:
        await watch.close()


async def test_a_slow_stream_gets_the_newest_snapshot_not_every_one(served: Served) -> None:
    """Each stream has a one-slot mailbox: writes that land before it sends coalesce into one."""
    watch = served.watch()
    try:
        await watch.next_snapshot()
        subs = list(served.service.streams)
        (sub,) = subs
        sub.wakeup.clear()
        # Offered in one go (the stream's task has not run in between): only the last is pending.
        served.source.write({LAYOUT.config_key(Layer.env("prod"), "a"): b"1"})
        served.source.write({LAYOUT.config_key(Layer.env("prod"), "a"): b"2"})
        last = served.source.write({LAYOUT.config_key(Layer.env("prod"), "a"): b"3"})
        snap = await watch.next_snapshot()
        assert snap.version == last and snap.config["a"] == 3
    finally:
        await watch.close()


async def test_staleness_reaches_the_streams_and_a_relist_catches_up(served: Served) -> None:
    watch = served.watch()
    try:
        await watch.next_snapshot()
        served.source.set_stale("upstream unreachable (test)")
        beat = await watch.next_message()
        assert beat.WhichOneof("kind") == "heartbeat" and beat.heartbeat.stale
        missed = served.put("pool", "77")  # written upstream while this replica could not hear
        served.source.set_stale("")
        snap = await watch.next_snapshot()
        assert snap.version == missed and snap.config["pool"] == 77 and not snap.stale
    finally:
        await watch.close()


SUBSCRIBE_AGAIN = config_pb2.Subscribe(environment="prod", service="orders", instance_id="x")
NEGATIVE_USAGE = config_pb2.FlagUsage(counts=[config_pb2.FlagUsageCount(flag="f", variant="v", count=-1)])


@pytest.mark.parametrize(
    ("second", "code"),
    [
        (config_pb2.WatchRequest(ack=config_pb2.Ack(version=42, hash="sha256:nope")), "unknown_version"),
        (config_pb2.WatchRequest(subscribe=SUBSCRIBE_AGAIN), "duplicate_subscribe"),
        (config_pb2.WatchRequest(), "empty_message"),
        (config_pb2.WatchRequest(usage=NEGATIVE_USAGE), "bad_usage"),
    ],
    ids=["ack-of-unsent", "second-subscribe", "empty", "negative-usage"],
)
async def test_a_protocol_error_ends_the_stream_with_its_code(
    served: Served, second: config_pb2.WatchRequest, code: str
) -> None:
    watch = served.watch()
    try:
        await watch.next_snapshot()
        watch.send(second)
        status, details = await ended_with(watch)
        assert status is grpc.StatusCode.INVALID_ARGUMENT, details
        metadata = await watch.call.trailing_metadata()
        found = [admin_pb2.ErrorDetail.FromString(v).code for k, v in metadata or () if k == ERROR_DETAIL_KEY]
        assert found == [code], (details, metadata)
    finally:
        await watch.close()


async def test_a_stream_without_a_subscribe_is_refused(served: Served) -> None:
    watch = RawWatch(served.address)
    try:
        watch.send(config_pb2.WatchRequest(ack=config_pb2.Ack(version=1, hash="x")))
        status, _ = await ended_with(watch)
        assert status is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await watch.close()


async def test_draining_ends_every_stream_with_unavailable(served: Served) -> None:
    watches = [served.watch(instance_id=f"i{n}") for n in range(3)]
    try:
        for watch in watches:
            await watch.next_snapshot()
        served.service.drain()
        for watch in watches:
            status, details = await ended_with(watch)
            assert status is grpc.StatusCode.UNAVAILABLE and "shutting down" in details
        assert served.plane.count() == 0 and not served.service.streams
    finally:
        for watch in watches:
            await watch.close()

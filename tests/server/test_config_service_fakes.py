"""The Watch service on its seams with the real client: an in-memory source, no etcd at all.

Beside the real-etcd tests (tests/integration), this shows what ConfigService depends on: the
snapshot plane, a source (``MemorySource``: synced, stale, revision, wait for a revision) and
stream callbacks (the ledger, flag usage, one of the test's own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from confmesh.client import ConfigClient, StartupError
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.config_service import ConfigService, add_config_service
from confmesh.server.ledger import Ledger
from confmesh.server.memory_source import MemorySource
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from confmesh.server.stream_callbacks import LedgerCallbacks, NoCallbacks, StreamOpened, UsageCallbacks
from confmesh.server.usage import FlagUsageStore
from tests.helpers import eventually

LAYOUT = KeyLayout("/fake")
SCOPE = Scope("prod", "orders")


class Heard(NoCallbacks):
    """A callback of our own beside the real ones: what the Watch service told it."""

    def __init__(self, heard: list[str]) -> None:
        self.heard = heard

    def opened(self, stream: StreamOpened) -> None:
        self.heard.append(f"opened {stream.instance_id}")

    def acked(self, stream: StreamOpened, version: int, hash_: str) -> None:
        self.heard.append(f"acked {version}")

    def closed(self, stream: StreamOpened) -> None:
        self.heard.append("closed")


class Plane:
    def __init__(self) -> None:
        self.store = server_store(LAYOUT)
        self.plane = SnapshotPlane(self.store)
        self.source = MemorySource(
            self.store, self.plane.apply, on_stale_change=lambda _: self.plane.ping_all()
        )
        self.ledger = Ledger()
        self.usage = FlagUsageStore()
        self.heard: list[str] = []
        callbacks = [LedgerCallbacks(self.ledger), UsageCallbacks(self.usage), Heard(self.heard)]
        self.service = ConfigService(self.plane, self.source, callbacks, heartbeat_interval=0.5)
        self.address = ""

    def load(self, **values: str) -> None:
        self.source.write({LAYOUT.config_key(Layer.defaults(), k): v.encode() for k, v in values.items()})
        self.source.start()

    def put(self, layer: Layer, key: str, value: str) -> int:
        return self.source.put(LAYOUT.config_key(layer, key), value.encode())


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    plane = Plane()
    server = grpc.aio.server()
    add_config_service(plane.service, server)
    plane.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield plane
    finally:
        await server.stop(None)


async def test_watch_pushes_from_the_store_and_the_ledger_records_acks(plane: Plane) -> None:
    plane.load(**{"pool.max": "10"})
    async with ConfigClient(plane.address, environment="prod", service="orders", instance_id="i-1") as client:
        assert (client.config, client.version) == ({"pool": {"max": 10}}, 1)
        seven = plane.put(Layer.env("prod"), "pool.max", "50")
        await client.wait_for_version(seven, timeout=5)
        assert client.config == {"pool": {"max": 50}} and client.deltas_applied == 1
        await eventually(
            lambda: [(r.instance_id, r.acked_version) for r in plane.ledger.records()] == [("i-1", seven)]
        )

        assert plane.heard[:3] == ["opened i-1", "acked 1", f"acked {seven}"]

        plane.source.set_stale("etcd unreachable (fake)")
        await eventually(lambda: client.server_stale, timeout=5)
        eight = plane.put(Layer.env("prod"), "pool.max", "60")  # not heard until the source is back
        plane.source.set_stale("")
        await client.wait_for_version(eight, timeout=5)
        assert not client.server_stale and client.config == {"pool": {"max": 60}}
    await eventually(lambda: plane.heard[-1] == "closed")


async def test_an_unsynced_etcd_side_is_unavailable_not_an_empty_config(plane: Plane) -> None:
    with pytest.raises(StartupError):
        async with ConfigClient(plane.address, environment="prod", service="orders", startup_timeout=1.5):
            pass
    assert plane.ledger.records() == [] or all(r.acked_version == 0 for r in plane.ledger.records())

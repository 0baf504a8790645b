"""The Watch service on its seam: an in-memory store and a fake etcd side, no etcd at all.

Beside the real-etcd tests (tests/integration), this shows what ConfigService depends on: a
store-backed Hub and Ledger, and a ``ServingState`` (synced, stale, revision, wait for a revision).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from confmesh.client import ConfigClient, StartupError
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.config_service import ConfigService, add_config_service
from confmesh.server.hub import Hub
from confmesh.server.kv import Event, KeyValue
from confmesh.server.ledger import Ledger
from confmesh.server.resolver import Resolver
from confmesh.server.store import ConfigStore
from confmesh.server.stream_callbacks import LedgerCallbacks, NoCallbacks, StreamOpened, UsageCallbacks
from confmesh.server.usage import FlagUsageStore
from tests.helpers import eventually

LAYOUT = KeyLayout("/fake")
SCOPE = Scope("prod", "orders")


class FakeEtcdSide:
    """A ServingState over an in-memory store: what EtcdSource tells the streams."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.stale_reason = ""

    @property
    def stale(self) -> bool:
        return bool(self.stale_reason)

    @property
    def synced(self) -> bool:
        return self.store.synced

    @property
    def revision(self) -> int:
        return self.store.revision

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        return self.store.synced and self.store.revision >= revision


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
        self.store = ConfigStore(LAYOUT)
        self.resolver = Resolver(self.store)
        self.hub = Hub(self.resolver)
        self.ledger = Ledger()
        self.state = FakeEtcdSide(self.store)
        self.usage = FlagUsageStore()
        self.heard: list[str] = []
        callbacks = [LedgerCallbacks(self.ledger), UsageCallbacks(self.usage), Heard(self.heard)]
        self.service = ConfigService(self.hub, self.state, callbacks, heartbeat_interval=0.5)
        self.address = ""

    def load(self, revision: int, **values: str) -> None:
        self.store.replace(
            [
                KeyValue(LAYOUT.config_key(Layer.defaults(), k), v.encode(), revision)
                for k, v in values.items()
            ],
            revision=revision,
        )

    def put(self, layer: Layer, key: str, value: str, revision: int) -> None:
        """What the app does with an etcd event: store, resolver, then the hub."""
        changes = self.store.apply([Event(False, LAYOUT.config_key(layer, key), value.encode(), revision)])
        self.resolver.update(changes)
        self.hub.publish([SCOPE])


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
    plane.load(3, **{"pool.max": "10"})
    async with ConfigClient(plane.address, environment="prod", service="orders", instance_id="i-1") as client:
        assert (client.config, client.version) == ({"pool": {"max": 10}}, 3)
        plane.put(Layer.env("prod"), "pool.max", "50", 7)
        await client.wait_for_version(7, timeout=5)
        assert client.config == {"pool": {"max": 50}} and client.deltas_applied == 1
        await eventually(
            lambda: [(r.instance_id, r.acked_version) for r in plane.ledger.records()] == [("i-1", 7)]
        )

        assert plane.heard[:3] == ["opened i-1", "acked 3", "acked 7"]

        plane.state.stale_reason = "etcd unreachable (fake)"
        plane.put(Layer.env("prod"), "pool.max", "60", 8)
        await client.wait_for_version(8, timeout=5)
        assert client.server_stale
    await eventually(lambda: plane.heard[-1] == "closed")


async def test_an_unsynced_etcd_side_is_unavailable_not_an_empty_config(plane: Plane) -> None:
    with pytest.raises(StartupError):
        async with ConfigClient(plane.address, environment="prod", service="orders", startup_timeout=1.5):
            pass
    assert plane.ledger.records() == [] or all(r.acked_version == 0 for r in plane.ledger.records())

"""The relay's parts without etcd: what a server's journal keeps and resumes from, what a relay's
identity may carry, the bounds on relayed fleet reports, that a relay's store resolves the same
versions and hashes as its upstream's (property test), and Mirror between a real gRPC server on the
in-memory source and a RelaySource: resume after a cut link, and a list that would empty the relay
served only once it is seen twice. tests/integration/test_relay_mesh.py runs real processes.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.access import Access, Grant, Role
from confmesh.server.fleet import decode, encode
from confmesh.server.journal import KeyJournal
from confmesh.server.kv import Event, KeyValue
from confmesh.server.ledger import Ledger
from confmesh.server.memory_source import MemorySource
from confmesh.server.mirror import MirrorService, carried
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from confmesh.server.relay_source import RelaySource
from confmesh.server.relayed_fleet import LocalInstances, RelayedFleet
from confmesh.server.resolver import Resolver
from confmesh.server.store import ConfigStore
from confmesh.v1 import relay_pb2, relay_pb2_grpc
from tests.helpers import TcpProxy, eventually

LAYOUT = KeyLayout("/r")
PROD, STAGING = Scope("prod", "orders"), Scope("staging", "orders")


def key(layer: Layer, k: str) -> str:
    return LAYOUT.config_key(layer, k)


def test_the_journal_keeps_only_what_may_leave_a_server_and_resumes_while_it_holds_the_events() -> None:
    journal = KeyJournal(LAYOUT, max_events=3)
    kept = key(Layer.env("prod"), "pool")
    never = [
        LAYOUT.token_root + "t1",
        LAYOUT.change_root + "c1",
        LAYOUT.fleet_root + "s/0000",
        LAYOUT.audit_root + "a1",
        LAYOUT.usage_root + "u",
    ]
    journal.listed([KeyValue(kept, b"1", 5), *(KeyValue(k, b"x", 5) for k in never)], 5)
    assert set(journal.keys) == {kept}
    assert journal.since(5) == [] and journal.since(4) is None and journal.since(6) is None
    journal.applied([Event(False, LAYOUT.token_root + "t2", b"s", 6), Event(False, kept, b"2", 7)])
    assert [e.mod_revision for e in journal.since(5) or []] == [7]
    journal.applied([Event(False, kept, str(n).encode(), n) for n in (8, 9, 10)])
    assert journal.since(5) is None  # the event at 7 was let go: a relay at 5 must re-list
    assert [e.mod_revision for e in journal.since(7) or []] == [8, 9, 10]
    journal.applied([Event(True, kept, b"", 11)])
    assert kept not in journal.keys and journal.revision == 11


def test_a_relay_carries_only_what_its_identity_reads_within_what_it_asked_for() -> None:
    keys = {
        "defaults": key(Layer.defaults(), "x"),
        "prod": key(Layer.env("prod"), "x"),
        "prod/orders": key(Layer.svc("prod", "orders"), "x"),
        "staging": key(Layer.env("staging"), "x"),
        "staging/orders": key(Layer.svc("staging", "orders"), "x"),
        "staging/api": key(Layer.svc("staging", "api"), "x"),
        "flags/staging": key(Layer.flags("staging"), "f"),
        "flags/prod": key(Layer.flags("prod"), "f"),
        "schema/staging": LAYOUT.schema_key(STAGING),
        "schema/prod": LAYOUT.schema_key(PROD),
        "rollout/prod": LAYOUT.rollout_key(PROD),
        "marker/prod": LAYOUT.marker_key(Layer.env("prod")),
    }

    def carried_by(grant: Grant | None, patterns: list[str]) -> set[str]:
        carries = carried(LAYOUT, grant, patterns)
        return {name for name, k in keys.items() if carries(k)}

    staging = Grant(role=Role.READER, scopes=("staging", "staging/*"))
    assert carried_by(staging, []) == {
        "defaults",
        "staging",
        "staging/orders",
        "staging/api",
        "flags/staging",
        "schema/staging",
    }
    assert carried_by(staging, ["staging/orders"]) == {
        "defaults",
        "staging",
        "staging/orders",
        "flags/staging",
        "schema/staging",
    }
    assert carried_by(None, []) == set(keys)
    assert carried_by(Grant(role=Role.ADMIN), ["prod/*"]) >= {
        "prod",
        "prod/orders",
        "flags/prod",
        "rollout/prod",
    }
    assert staging.can_carry("staging/*") and not staging.can_carry("prod/*") and not staging.can_carry("*")
    assert not Grant(role=Role.SERVICE, environment="prod", service="orders").can_carry("prod/orders")


def test_relayed_fleet_reports_are_bounded_filtered_and_expire() -> None:
    ledger = Ledger(server_id="eu")
    for i in range(3):
        ledger.connect(
            i,
            instance_id=f"i{i}",
            scope=PROD if i else STAGING,
            peer="p",
            labels={},
            known_version=1,
            known_hash="h",
        )
    below = RelayedFleet()
    below.keep("zone-stream", [])
    report = LocalInstances(ledger, below).report()
    fleet = RelayedFleet(ttl=0.05)
    records, _ = RelayedFleet(server_id="me").decode("eu", report, lambda r: r.scope == PROD)
    assert sorted(r.instance_id for r in records) == ["i1", "i2"] and {r.via for r in records} == {"eu"}
    fleet.keep("s1", records)
    assert len(fleet.records()) == 2
    fleet.gone("s1")
    assert len(fleet.records()) == 2
    time.sleep(0.06)
    assert fleet.records() == []

    too_many = relay_pb2.FleetReport(chunks=[relay_pb2.FleetChunk(summary=encode([])[0])] * 201)
    with pytest.raises(ValueError, match="chunks"):
        RelayedFleet(server_id="me").decode("eu", too_many, lambda r: True)
    with pytest.raises(ValueError, match="path"):
        RelayedFleet(server_id="me").decode(
            "eu", relay_pb2.FleetReport(chunks=[relay_pb2.FleetChunk(path="x" * 300)]), lambda r: True
        )
    bomb = zlib.compress(b" " * (64 * 1024 * 1024), 9)  # 64 MiB of spaces in ~64 KB
    assert decode("eu", bomb) == []  # refused, not inflated


def test_a_chained_relays_instances_and_freshness_are_reported_behind_their_path() -> None:
    zone = Ledger(server_id="zone-a")
    zone.connect(1, instance_id="z1", scope=PROD, peer="p", labels={}, known_version=1, known_hash="h")
    lost = relay_pb2.RelayState(stale_reason="upstream unreachable", lost_at=5.0, revision=9)
    from_zone = LocalInstances(zone, RelayedFleet()).report(lost)
    mid = RelayedFleet()
    mid.keep("zone", *RelayedFleet(server_id="me").decode("zone-a", from_zone, lambda r: True))
    eu = Ledger(server_id="eu")
    eu.connect(1, instance_id="e1", scope=PROD, peer="p", labels={}, known_version=1, known_hash="h")
    report = LocalInstances(eu, mid).report(relay_pb2.RelayState(revision=10))
    at_root, relays = RelayedFleet(server_id="me").decode("eu", report, lambda r: True)
    assert sorted((r.instance_id, r.via) for r in at_root) == [("e1", "eu"), ("z1", "eu/zone-a")]
    assert sorted((r.path, r.stale_reason, r.revision) for r in relays) == [
        ("eu", "", 10),
        ("eu/zone-a", "upstream unreachable", 9),
    ]
    root = Ledger(server_id="root")
    root_fleet = RelayedFleet(server_id="root")
    at_root, relays = root_fleet.decode("eu", report, lambda r: True)
    root_fleet.keep("eu", at_root, relays)
    shown = LocalInstances(root, root_fleet).records()
    assert {(r.server_id, r.via) for r in shown} == {("root", "eu"), ("root", "eu/zone-a")}
    # Two relays' streams with the same stream id are two records in the fleet view (one per path).
    assert len({(r.server_id, r.via, r.stream_id) for r in shown}) == 2
    root_fleet.gone("eu")
    assert [(s.path, connected) for s, connected, _ in root_fleet.relays()] == [
        ("eu", False),
        ("eu/zone-a", False),
    ]
    with pytest.raises(ValueError, match="relays"):
        RelayedFleet(server_id="me").decode(
            "eu", relay_pb2.FleetReport(relays=[relay_pb2.RelayState()] * 1001), lambda r: True
        )


ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                Layer.defaults(),
                Layer.env("prod"),
                Layer.svc("prod", "orders"),
                Layer.flags("prod"),
                Layer.env("staging"),
            ]
        ),
        st.sampled_from(["a", "b", "c.d"]),
        st.none() | st.integers(0, 5),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(0, 25))
def test_a_relay_resolves_the_same_versions_and_hashes_as_its_upstream(
    writes: list[tuple[Layer, str, int | None]], cut: int
) -> None:
    """The upstream applies writes (deletes included); the relay lists once at some point and
    follows the rest as events, as over Mirror: every scope resolves to the same version and hash."""
    upstream = server_store(LAYOUT)
    upstream.journal = KeyJournal(LAYOUT)
    relay = server_store(LAYOUT)
    relay.journal = KeyJournal(LAYOUT)
    upstream.replace([], 1)
    revision = 1
    for n, (layer, k, value) in enumerate(writes):
        revision += 1
        flag = {"variants": {"on": True, "off": False}, "default_variant": "on"}
        raw = json.dumps(flag if layer.kind.name == "FLAGS" else value).encode()
        event: Event | None = Event(False, key(layer, k), raw, revision)
        if value is None:
            event = Event(True, key(layer, k), b"", revision) if k in upstream.entries(layer) else None
        if event is not None:
            upstream.apply([event])
        if n == cut:
            relay.replace(list(upstream.journal.keys.values()), upstream.journal.revision)
            relay.adopt_layer_revisions(upstream.layer_revisions())
        elif n > cut and event is not None:
            relay.apply([event])
    if cut >= len(writes):
        relay.replace(list(upstream.journal.keys.values()), upstream.journal.revision)
        relay.adopt_layer_revisions(upstream.layer_revisions())
    for scope in (PROD, Scope("staging", "orders"), Scope("prod", "api")):
        ours, theirs = Resolver(relay).snapshot(scope), Resolver(upstream).snapshot(scope)
        assert (ours.version, ours.hash) == (theirs.version, theirs.hash)


# -- Mirror over gRPC, on the in-memory source ---------------------------------------------------


@dataclass
class Pair:
    source: MemorySource
    relay: RelaySource
    relay_store: ConfigStore
    proxy: TcpProxy


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    store = server_store(LAYOUT)
    store.journal = KeyJournal(LAYOUT)
    plane = SnapshotPlane(store)
    source = MemorySource(store, plane.apply)
    source.write({key(Layer.env("prod"), f"k{i}"): str(i).encode() for i in range(20)})
    source.start()
    server = grpc.aio.server()
    mirror = MirrorService(store, store.journal, source, Access(dict), RelayedFleet(), progress_interval=0.2)
    relay_pb2_grpc.add_RelayServiceServicer_to_server(mirror, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    proxy = await TcpProxy(f"127.0.0.1:{port}").mend()
    relay_store = server_store(LAYOUT)
    relay_store.journal = KeyJournal(LAYOUT)
    relay_plane = SnapshotPlane(relay_store)
    relay = RelaySource(
        relay_store,
        relay_plane.apply,
        upstream=proxy.address,
        relay_id="r1",
        scopes=[],
        instances=LocalInstances(Ledger(), RelayedFleet()),
        data_dir=tmp_path,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    relay.start()
    try:
        yield Pair(source, relay, relay_store, proxy)
    finally:
        await relay.stop()
        await proxy.cut()
        await server.stop(0)


async def test_a_relay_resumes_after_a_cut_link_without_a_list(pair: Pair) -> None:
    await eventually(lambda: pair.relay_store.synced and len(pair.relay.journal.keys) == 20)
    assert pair.relay.lists == 1 and not pair.relay.stale
    await pair.proxy.cut()
    await eventually(lambda: pair.relay.stale and "unreachable since" in pair.relay.stale_reason)
    revision = pair.source.put(key(Layer.env("prod"), "k0"), b"100")
    pair.source.delete(key(Layer.env("prod"), "k1"))
    await pair.proxy.mend()
    await eventually(lambda: pair.relay_store.revision >= revision + 1 and not pair.relay.stale, timeout=10)
    assert pair.relay_store.entries(Layer.env("prod"))["k0"] == 100
    assert "k1" not in pair.relay_store.entries(Layer.env("prod"))
    assert pair.relay.lists == 1 and pair.relay.resumes >= 1
    layer = Layer.env("prod")
    assert pair.relay_store.layer_revision(layer) == pair.source.store.layer_revision(layer)
    assert pair.relay.data_dir is not None
    await eventually(lambda: (pair.relay.data_dir / "mirror.pb").exists())


async def test_a_list_that_would_empty_a_relay_is_served_only_when_seen_twice(pair: Pair) -> None:
    await eventually(lambda: len(pair.relay.journal.keys) == 20)
    # The upstream loses most keys and re-lists (as after restoring an empty etcd).
    pair.source.set_stale("etcd down")
    for i in range(2, 20):
        pair.source._keys.pop(key(Layer.env("prod"), f"k{i}"))
    pair.source.set_stale("")
    await eventually(lambda: len(pair.relay.journal.keys) == 2, timeout=10)
    assert pair.relay.lists == 2  # one list was held back, then the same list again was served


async def test_the_relays_store_is_served_stale_from_its_persisted_snapshot(
    pair: Pair, tmp_path: Path
) -> None:
    await eventually(lambda: len(pair.relay.journal.keys) == 20)
    await eventually(lambda: (tmp_path / "mirror.pb").exists())
    again = server_store(LAYOUT)
    again.journal = KeyJournal(LAYOUT)
    plane = SnapshotPlane(again)
    restarted = RelaySource(
        again,
        plane.apply,
        upstream="127.0.0.1:1",
        relay_id="r1",
        scopes=[],
        instances=LocalInstances(Ledger(), RelayedFleet()),
        data_dir=tmp_path,
    )
    restarted._load()
    assert again.synced and len(again.entries(Layer.env("prod"))) == 20
    assert restarted.stale and "persisted" in restarted.stale_reason
    assert again.layer_revision(Layer.env("prod")) == pair.relay_store.layer_revision(Layer.env("prod"))
    await asyncio.sleep(0)

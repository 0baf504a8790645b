"""Small seams, alone: what every source offers, how a malformed message reaches a servicer, how the
stream metrics count without a lock."""

from __future__ import annotations

from prometheus_client import generate_latest

from confmesh.keys import KeyLayout, Scope
from confmesh.server.interceptors import Malformed, checked_deserializer
from confmesh.server.memory_source import MemorySource
from confmesh.server.metrics import PROPAGATION_BUCKETS, Metrics
from confmesh.server.serving import Source
from confmesh.server.source import EtcdSource
from confmesh.server.store import ConfigStore
from confmesh.v1 import config_pb2


def test_every_source_offers_the_whole_seam() -> None:
    from confmesh.server.etcd import Etcd

    store = ConfigStore(KeyLayout("/m"))
    sources = [EtcdSource(Etcd(["127.0.0.1:1"]), store, print), MemorySource(store, print)]  # not started
    wanted = {name for kind in Source.__mro__ for name in vars(kind) if not name.startswith("_")}
    assert {"start", "stale", "wait_for_revision"} <= wanted
    for source in sources:
        assert all(hasattr(source, name) for name in wanted), (type(source), wanted)
        assert source.stale and not source.synced  # nothing listed yet: not served


async def test_a_memory_source_dates_what_it_missed_at_the_relist() -> None:
    store = ConfigStore(KeyLayout("/m"))
    heard = []
    source = MemorySource(store, heard.append)
    source.put("/m/config/defaults/a", b"1")
    source.start()
    assert store.synced and store.revision == 1 and len(heard) == 1
    source.set_stale("gone")
    source.put("/m/config/defaults/a", b"2")
    assert len(heard) == 1 and source.stale
    source.set_stale("")
    assert heard[-1].revision == 2 and store.entries(heard[-1].layers.popitem()[0]) == {"a": 2}
    assert await source.wait_for_revision(2, 1.0) and not await source.wait_for_revision(3, 0.05)


def test_a_malformed_message_reaches_the_servicer_as_a_value_not_an_exception() -> None:
    decode = checked_deserializer(config_pb2.WatchRequest.FromString, "/confmesh.v1.ConfigService/Watch")
    good = config_pb2.WatchRequest(ack=config_pb2.Ack(version=3, hash="h")).SerializeToString()
    assert decode(good).ack.version == 3
    bad = decode(b"\xff\xff\xff")
    assert (
        isinstance(bad, Malformed) and "malformed request for /confmesh.v1.ConfigService/Watch" in bad.message
    )


def test_stream_counts_and_propagation_are_plain_numbers_until_scraped() -> None:
    metrics = Metrics()
    counters = metrics.for_stream(Scope("prod", "orders"))
    assert metrics.for_stream(Scope("prod", "orders")) is counters  # looked up once per stream
    counters.pushed += 2
    metrics.propagation.observe(0.0)
    metrics.propagation.observe(1e9)
    assert metrics.propagation.counts[0] == 1 and metrics.propagation.counts[-1] == 1
    assert len(metrics.propagation.counts) == len(PROPAGATION_BUCKETS) + 1
    text = generate_latest(metrics.registry).decode()
    assert 'confmesh_snapshots_pushed_total{environment="prod",service="orders"} 2.0' in text
    assert "confmesh_propagation_seconds_count 2.0" in text

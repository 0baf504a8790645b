"""The fleet view's pure parts, beside the real-etcd tests in tests/fleet/: summaries round-trip,
the join keeps one record per stream and shows an instance where it is connected, version groups
count every connected instance where it belongs, and the publisher writes only what changed, in
transactions etcd accepts, under a lease it renews."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.keys import KeyLayout, Scope
from confmesh.server.fleet import (
    CHUNK_RECORDS,
    FleetPublisher,
    FleetView,
    decode,
    encode,
    scope_status,
    version_groups,
)
from confmesh.server.ledger import InstanceRecord, Ledger, NackInfo

SCOPE = Scope("prod", "api")

records_st = st.lists(
    st.builds(
        InstanceRecord,
        stream_id=st.integers(0, 10**9),
        instance_id=st.text("abc-0123456789", min_size=1, max_size=12),
        scope=st.sampled_from([SCOPE, Scope("staging", "api"), Scope("prod", "orders")]),
        peer=st.text(max_size=20),
        labels=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        connected_at=st.floats(0, 2e9),
        last_seen=st.floats(0, 2e9),
        connected=st.booleans(),
        acked_version=st.integers(0, 10**6),
        acked_hash=st.text(max_size=20),
        sent_version=st.integers(0, 10**6),
        last_nack=st.none()
        | st.builds(
            NackInfo,
            st.integers(1, 10**6),
            st.text(max_size=8),
            st.text(max_size=30),
            st.lists(st.text(max_size=10), max_size=3),
            st.floats(0, 2e9),
        ),
        disconnected_at=st.floats(0, 2e9),
        server_id=st.just(""),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(records_st)
def test_a_summary_decodes_to_the_records_it_encodes(records: list[InstanceRecord]) -> None:
    values = encode(records)
    decoded = [r for v in values for r in decode("replica-1", v)]
    for r in records:
        r.server_id = "replica-1"
    assert decoded == records


def test_summaries_are_chunked_and_garbage_is_ignored() -> None:
    ledger = Ledger(server_id="me")
    for i in range(CHUNK_RECORDS * 2 + 5):
        ledger.connect(
            i, instance_id=f"i{i}", scope=SCOPE, peer="p", labels={}, known_version=1, known_hash="h"
        )
    assert len(encode(ledger.records())) == 3
    assert encode([]) and decode("x", encode([])[0]) == []
    assert decode("x", b"not zlib") == [] and decode("x", b"") == []


def record(
    server: str,
    stream: int,
    instance: str,
    *,
    connected: bool = True,
    gone_at: float = 0.0,
    acked: int = 0,
    sent: int = 0,
    nack: tuple[int, list[str]] | None = None,
) -> InstanceRecord:
    return InstanceRecord(
        stream_id=stream, instance_id=instance, scope=SCOPE, peer="", labels={}, connected_at=1.0,
        last_seen=1.0, connected=connected, acked_version=acked, sent_version=sent,
        last_nack=None if nack is None else NackInfo(nack[0], "h", "refused", nack[1], 2.0),
        disconnected_at=gone_at, server_id=server,
    )  # fmt: skip


def view_of(local: list[InstanceRecord], others: dict[str, list[InstanceRecord]]) -> FleetView:
    ledger = Ledger(server_id="me")
    ledger.records = lambda: list(local)  # type: ignore[method-assign]
    summaries = {(server, "0000"): (encode(rs)[0], 7) for server, rs in others.items()}
    return FleetView(ledger, summaries, "me")


def test_the_join_shows_an_instance_where_it_is_connected_and_each_stream_once() -> None:
    view = view_of(
        [record("me", 1, "moved"), record("me", 2, "gone-everywhere", connected=False, gone_at=5)],
        {
            "other": [record("other", 9, "moved", connected=False, gone_at=3),
                      record("other", 10, "gone-everywhere", connected=False, gone_at=8),
                      record("other", 11, "here"), record("other", 11, "here")],  # one stream in two chunks
        },
    )  # fmt: skip
    shown = [(r.instance_id, r.server_id, r.connected) for r in view.records()]
    assert sorted(shown) == [
        ("gone-everywhere", "other", False),
        ("here", "other", True),
        ("moved", "me", True),
    ]
    assert [r.instance_id for r in view.records(local=True)] == ["moved", "gone-everywhere"]
    assert view.replicas() == ["me", "other"]
    assert view.covers(6) and not view.covers(7)


def test_version_groups_count_each_connected_instance_where_it_belongs() -> None:
    records = [
        record("a", 1, "runs-5", acked=5, sent=5),
        record("a", 2, "refused-6", acked=5, sent=6, nack=(6, ["pool", "mode"])),
        record("b", 3, "refused-6-too", acked=5, sent=6, nack=(6, ["pool"])),
        record("b", 4, "waits-6", acked=5, sent=6),
        record("b", 5, "runs-6", acked=6, sent=6),
        record("b", 6, "gone", connected=False, acked=4, sent=4),
    ]
    groups = {g.version: g for g in version_groups(records, SCOPE)}
    assert sorted(groups) == [5, 6]
    six, five = groups[6], groups[5]
    assert (sorted(six.acked), sorted(six.pending), sorted(six.nacked)) == (
        ["runs-6"], ["waits-6"], ["refused-6", "refused-6-too"])  # fmt: skip
    assert {path: sorted(ids) for path, (ids, _) in six.rejections.items()} == {
        "pool": ["refused-6", "refused-6-too"], "mode": ["refused-6"]}  # fmt: skip
    assert sorted(five.acked) == ["refused-6", "refused-6-too", "runs-5", "waits-6"]
    assert [g.version for g in version_groups(records, SCOPE, 5)] == [5]
    assert version_groups(records, Scope("prod", "other")) == []


class FakeEtcd:
    """What FleetPublisher asks of etcd, recorded."""

    max_request_bytes = 1_572_864

    def __init__(self) -> None:
        self.txns: list[list[Any]] = []
        self.leases = 0
        self.ttl_left = 10

    async def grant_lease(self, ttl: int) -> int:
        self.leases += 1
        return self.leases

    async def keep_lease(self, lease_id: int) -> int:
        return self.ttl_left

    async def txn(self, compare: list[Any], success: list[Any]) -> None:
        assert sum(op.ByteSize() for op in success) <= 1 << 20
        self.txns.append(list(success))


async def test_the_publisher_writes_what_changed_under_a_renewed_lease() -> None:
    ledger = Ledger(server_id="me")
    for i in range(CHUNK_RECORDS * 3):
        ledger.connect(
            i, instance_id=f"i{i:05d}", scope=SCOPE, peer="p", labels={}, known_version=1, known_hash="h"
        )
    etcd = FakeEtcd()
    epoch = [0]
    publisher = FleetPublisher(etcd, KeyLayout("/p"), ledger, "me", epoch=lambda: epoch[0])  # type: ignore[arg-type]
    await publisher.tick()
    assert publisher.published_chunks == 3 and sum(len(t) for t in etcd.txns) == 3
    etcd.txns.clear()
    await publisher.tick()
    assert etcd.txns == []  # nothing changed: nothing written
    ledger.ack(CHUNK_RECORDS + 1, 2, "h2")  # a record of the second chunk
    await publisher.tick()
    (only,) = etcd.txns
    assert [op.request_put.key for op in only] == [b"/p/fleet/me/0001"]
    etcd.txns.clear()
    for i in range(CHUNK_RECORDS, CHUNK_RECORDS * 3):
        ledger.disconnect(i)
    ledger.retention = 0
    ledger.records()  # prunes the disconnected
    await publisher.tick()
    ops = [op for t in etcd.txns for op in t]
    assert [op.request_delete_range.key for op in ops if op.HasField("request_delete_range")] == [
        b"/p/fleet/me/0001", b"/p/fleet/me/0002"]  # fmt: skip
    etcd.txns.clear()
    epoch[0] += 1  # a rollout changed, the ledger did not: every chunk again, each newer than it
    await publisher.tick()
    assert sorted(op.request_put.key for t in etcd.txns for op in t) == [b"/p/fleet/me/0000"]
    etcd.txns.clear()
    etcd.ttl_left = 0  # the lease expired: a new one, and every chunk again under it
    await publisher.tick()
    assert etcd.leases == 2 and [op.request_put.lease for t in etcd.txns for op in t] == [2]


def test_a_scope_status_answer_is_bounded_whatever_peers_claim() -> None:
    """NACKs name any version and any field paths they like: 2,000 instances each rejecting its
    own version at 33 long paths with a 1,024-character error still make a small answer."""
    records = [
        record(
            "a",
            i,
            f"hostile-{i}",
            acked=1,
            sent=1,
            nack=(10_000 + i, [f"{'p' * 200}{i}-{j}" for j in range(33)]),
        )
        for i in range(2_000)
    ]
    for r in records:
        assert r.last_nack is not None
        r.last_nack.error = "E" * 1024
    resp = scope_status(records, SCOPE, 0, 1, ["a"])
    assert resp.ByteSize() < 1 << 20, resp.ByteSize()
    assert len(resp.versions) == 50 and resp.versions_left_out == 2_000 + 1 - 50
    newest = resp.versions[0]
    assert newest.version == 11_999 and newest.rejection_paths_left_out == 33 - 20
    assert len(newest.rejections) == 20 and len(newest.rejections[0].example_error) <= 300
    one = scope_status(records, SCOPE, 1, 1, ["a"])
    assert [v.version for v in one.versions] == [1] and one.versions[0].acked == 2_000
    assert len(one.versions[0].acked_instances) == 20

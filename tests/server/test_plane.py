"""The snapshot plane owns "the store changed → re-resolve → publish", and the store keeps records as
registered kinds: pure, no etcd, no event loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.kv import Event, KeyValue
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import ROLLOUTS, SCHEMAS, TOKENS, server_store
from confmesh.server.resolver import Resolved
from confmesh.server.store import ConfigStore, RecordKind, StoreChange

LAYOUT = KeyLayout("/p")
ORDERS, PAYMENTS, STAGING = Scope("prod", "orders"), Scope("prod", "payments"), Scope("staging", "orders")


@dataclass(eq=False)
class Stream:
    scope: Scope
    instance_id: str = "i"
    offered: list[Resolved] = field(default_factory=list)
    pings: int = 0

    def offer(self, snapshot: Resolved) -> None:
        self.offered.append(snapshot)

    def ping(self) -> None:
        self.pings += 1


def put(layer: Layer, key: str, value: object, revision: int) -> Event:
    return Event(False, LAYOUT.config_key(layer, key), json.dumps(value).encode(), revision)


def started() -> tuple[ConfigStore, SnapshotPlane, list[StoreChange]]:
    store = server_store(LAYOUT)
    plane = SnapshotPlane(store)
    heard: list[StoreChange] = []
    plane.listen(heard.append)
    plane.apply(store.replace([KeyValue(LAYOUT.config_key(Layer.defaults(), "pool"), b"1", 1)], 1))
    return store, plane, heard


def test_a_change_reaches_the_streams_of_the_scopes_it_touches_and_no_others() -> None:
    store, plane, heard = started()
    orders, payments, staging = Stream(ORDERS), Stream(PAYMENTS), Stream(STAGING)
    for stream in (orders, payments, staging):
        plane.subscribe(stream)
    assert [len(s.offered) for s in (orders, payments, staging)] == [1, 1, 1]  # the current one at once
    plane.apply(store.apply([put(Layer.svc("prod", "orders"), "pool", 2, 2)]))
    assert [len(s.offered) for s in (orders, payments, staging)] == [2, 1, 1]
    assert orders.offered[-1].config == {"pool": 2} and orders.offered[-1].version == 2
    plane.apply(store.apply([put(Layer.env("prod"), "timeout", 5, 3)]))
    assert [len(s.offered) for s in (orders, payments, staging)] == [3, 2, 1]
    assert heard[-1].layers == {Layer.env("prod"): {"timeout"}} and heard[-1].revision == 3
    plane.unsubscribe(orders)
    assert set(plane.scopes()) == {PAYMENTS, STAGING}


def test_records_are_one_mechanism_and_changes_come_in_one_shape() -> None:
    store, plane, heard = started()
    stream = Stream(ORDERS)
    plane.subscribe(stream)
    schema = {"schema": {"type": "object", "properties": {"pool": {"type": "integer"}}}, "registered_by": "t"}
    plane.apply(store.apply([Event(False, LAYOUT.schema_key(ORDERS), json.dumps(schema).encode(), 2)]))
    change = heard[-1]
    assert change.kinds == {SCHEMAS.name} and change.scopes == {ORDERS} and not change.layers
    assert ORDERS in store.records(SCHEMAS) and store.revisions(SCHEMAS)[ORDERS] == 2
    assert len(stream.offered) == 2  # re-resolved against its new schema and offered again
    # An unusable record is skipped and named, like an unusable config key.
    plane.apply(store.apply([Event(False, LAYOUT.rollout_key(ORDERS), b"{not json", 3)]))
    assert ORDERS not in store.records(ROLLOUTS)
    assert store.bad_keys[LAYOUT.rollout_key(ORDERS)].startswith("unusable rollout:")
    plane.apply(store.apply([Event(False, f"{LAYOUT.token_root}abc", b"{}", 4)]))
    assert heard[-1].kinds == {TOKENS.name} and "abc" not in store.records(TOKENS)


def test_a_relist_reports_what_moved_while_not_watching() -> None:
    store, _, _ = started()
    store.apply([Event(False, LAYOUT.schema_key(PAYMENTS), b'{"schema": {}, "registered_by": "t"}', 2)])
    change = store.replace([KeyValue(LAYOUT.config_key(Layer.defaults(), "pool"), b"1", 1)], 9)
    assert change.kinds == {SCHEMAS.name} and PAYMENTS in change.scopes  # the schema was deleted meanwhile
    assert store.revisions(SCHEMAS)[PAYMENTS] == 9  # dated at the list, so versions never go back
    assert not store.replace([KeyValue(LAYOUT.config_key(Layer.defaults(), "pool"), b"1", 1)], 10)


def test_a_failing_listener_holds_back_neither_delivery_nor_the_others() -> None:
    store, plane, _ = started()

    def broken(_: StoreChange) -> None:
        raise RuntimeError("a listener's bug")

    later: list[StoreChange] = []
    plane.listen(broken)
    plane.listen(later.append)
    stream = Stream(ORDERS)
    plane.subscribe(stream)
    plane.apply(store.apply([put(Layer.defaults(), "pool", 3, 2)]))
    assert stream.offered[-1].config == {"pool": 3} and len(later) == 1


def test_a_kind_is_declared_once_and_the_store_knows_nothing_else_of_it() -> None:
    notes: RecordKind[str, str] = RecordKind("note", lambda layout: f"{layout.prefix}/meta/notes/", key=str,
                                             decode=lambda _, raw, __: raw.decode())  # fmt: skip
    store = ConfigStore(LAYOUT, [notes])
    change = store.apply([Event(False, f"{LAYOUT.prefix}/meta/notes/n1", b"hello", 5)])
    assert store.records(notes) == {"n1": "hello"} and change.kinds == {"note"}
    store.apply([Event(True, f"{LAYOUT.prefix}/meta/notes/n1", b"", 6)])
    assert store.records(notes) == {} and store.revisions(notes) == {"n1": 6}

"""The pure store: versions only grow, deletes move them, garbage is isolated."""

from __future__ import annotations

from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.kv import Event, KeyValue
from confmesh.server.store import ConfigStore

LAYOUT = KeyLayout("/cm")
SCOPE = Scope("prod", "orders")


def kv(layer: Layer, key: str, value: str, rev: int) -> KeyValue:
    return KeyValue(LAYOUT.config_key(layer, key), value.encode(), rev)


def test_versions_come_from_the_newest_contributing_revision() -> None:
    store = ConfigStore(LAYOUT)
    changed = store.replace(
        [
            kv(Layer.defaults(), "a", "1", 3),
            kv(Layer.env("prod"), "b", "2", 5),
            kv(Layer.env("staging"), "b", "9", 8),
        ],
        revision=8,
    )
    assert changed.layers == {Layer.defaults(): {"a"}, Layer.env("prod"): {"b"}, Layer.env("staging"): {"b"}}
    assert store.scope_version(SCOPE) == 5
    assert store.scope_version(Scope("staging", "orders")) == 8


def test_a_delete_event_moves_the_version_forward() -> None:
    store = ConfigStore(LAYOUT)
    store.replace([kv(Layer.defaults(), "a", "1", 3), kv(Layer.env("prod"), "b", "2", 5)], revision=5)
    changed = store.apply([Event(True, LAYOUT.config_key(Layer.env("prod"), "b"), b"", 9)])
    assert changed.layers == {Layer.env("prod"): {"b"}}
    assert store.scope_version(SCOPE) == 9
    assert store.entries(Layer.env("prod")) == {}


def test_a_relist_after_an_outage_dates_missed_deletes_at_the_list_revision() -> None:
    store = ConfigStore(LAYOUT)
    store.replace([kv(Layer.defaults(), "a", "1", 3), kv(Layer.env("prod"), "b", "2", 5)], revision=5)
    changed = store.replace([kv(Layer.defaults(), "a", "1", 3)], revision=12)
    assert changed.layers == {Layer.env("prod"): {"b"}}
    assert store.scope_version(SCOPE) == 12


def test_unusable_keys_are_reported_and_skipped() -> None:
    store = ConfigStore(LAYOUT)
    store.replace(
        [
            kv(Layer.defaults(), "a", "{oops", 2),
            KeyValue("/cm/config/env/BAD/a", b"1", 3),
            kv(Layer.defaults(), "b", "true", 4),
        ],
        revision=4,
    )
    assert store.entries(Layer.defaults()) == {"b": True}
    assert set(store.bad_keys) == {LAYOUT.config_key(Layer.defaults(), "a"), "/cm/config/env/BAD/a"}
    store.apply([Event(False, LAYOUT.config_key(Layer.defaults(), "a"), b"2", 6)])
    assert store.entries(Layer.defaults()) == {"a": 2, "b": True}
    assert store.bad_keys == {"/cm/config/env/BAD/a": store.bad_keys["/cm/config/env/BAD/a"]}


def test_prefix_queries_follow_every_change() -> None:
    store = ConfigStore(LAYOUT)
    layer = Layer.defaults()
    store.replace([kv(layer, "db.host", '"a"', 2), kv(layer, "dbx", "1", 3), kv(layer, "db", "{}", 4)], 4)
    assert store.view(layer).under("db") == {"db": {}, "db.host": "a"}
    store.apply(
        [
            Event(False, LAYOUT.config_key(layer, "db.pool.max"), b"5", 5),
            Event(True, LAYOUT.config_key(layer, "db.host"), b"", 6),
            Event(False, LAYOUT.config_key(layer, "db-a"), b"1", 7),
        ]
    )
    assert store.view(layer).under("db") == {"db": {}, "db.pool.max": 5}
    assert store.sorted_keys(layer) == sorted(store.entries(layer))

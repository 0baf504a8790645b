"""The Consul KV API's pure parts, beside the real-client tests (tests/protocols/test_consul_kv.py):
the key mapping both ways, value encoding, `wait` parsing, and blocking queries woken only by a
change to a key they read (on the in-memory store, no etcd, no HTTP)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh import errors
from confmesh.keys import KeyLayout, Layer
from confmesh.server.consul_kv import KvWatch, Mapping, decode_value, encode_value, parse_wait
from confmesh.server.kv import Event
from confmesh.server.record_kinds import server_store

LAYOUT = KeyLayout("/c")
segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


@given(
    st.sampled_from(["prod", "staging"]),
    st.sampled_from(["global", "orders"]),
    st.lists(segment, min_size=1, max_size=4),
)
def test_the_mapping_round_trips(env: str, service: str, path: list[str]) -> None:
    mapping = Mapping()
    key = "/".join(["config", env, service, *path])
    layer, dotted = mapping.locate(key)
    assert layer == (Layer.env(env) if service == "global" else Layer.svc(env, service))
    assert dotted == ".".join(path) and mapping.consul_key(layer, dotted) == key


OUTSIDE = ["config/prod", "config/prod/orders", "other/prod/orders/x", "config//orders/x",
           "config/prod/orders/a.b", "config/Bad Env/orders/x"]  # fmt: skip


@pytest.mark.parametrize("key", OUTSIDE)
def test_keys_outside_the_mapping_are_refused(key: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        Mapping().locate(key)


def test_values_read_back_as_written() -> None:
    assert encode_value("db.internal") == b"db.internal" and decode_value(b"db.internal") == "db.internal"
    assert encode_value({"a": [1, True]}) == b'{"a":[1,true]}' and decode_value(b'{"a": [1, true]}') == {
        "a": [1, True]
    }
    assert decode_value(b"10") == 10 and decode_value(b"") == ""
    with pytest.raises(errors.InvalidArgument):
        decode_value(b"\xff\xfe")
    assert (parse_wait(""), parse_wait("10s"), parse_wait("5m"), parse_wait("1h"), parse_wait("250ms")) == (
        300.0, 10.0, 300.0, 600.0, 0.25)  # fmt: skip
    with pytest.raises(errors.InvalidArgument):
        parse_wait("soon")


async def test_a_blocking_query_wakes_on_its_own_key_only() -> None:
    store = server_store(LAYOUT)
    store.replace([], 1)
    watch = KvWatch(store, Mapping())
    orders = Layer.svc("prod", "orders")

    def write(revision: int, key: str, deleted: bool = False) -> None:
        change = store.apply(
            [Event(deleted, LAYOUT.config_key(orders, key), b"" if deleted else b"1", revision)]
        )
        watch.changed(change)

    exact = asyncio.create_task(watch.wait("config/prod/orders/a", True, 1, 5))
    prefix = asyncio.create_task(watch.wait("config/prod/orders/db/", False, 1, 5))
    other = asyncio.create_task(watch.wait("config/prod/global/", False, 1, 0.3))
    await asyncio.sleep(0)
    write(2, "ab")  # neither "a" nor under "db/"
    await asyncio.sleep(0.05)
    assert not exact.done() and not prefix.done() and watch.waiting == 3
    write(3, "a")
    write(4, "db.pool")
    await asyncio.wait_for(asyncio.gather(exact, prefix), 1)
    await other  # timed out: nothing in prod/global changed
    assert watch.waiting == 0
    write(5, "a", deleted=True)
    assert watch.deleted[orders] == 5

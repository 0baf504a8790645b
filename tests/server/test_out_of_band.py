"""Out-of-band writes: no key, from any writer, stops delivery for any other scope.

A value that is valid JSON text but not usable (a lone surrogate, NaN, 2**53+1), or a key that is not
UTF-8, is skipped and logged like garbage; the server's view of etcd keeps moving for every scope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh.client import AdminClient, ConfigClient
from confmesh.digest import format_hash
from confmesh.errors import InvalidArgument
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.merge import loads_json, parse_json_value
from confmesh.server import ConfmeshServer
from confmesh.server.kv import Event, KeyValue
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from confmesh.server.store import ConfigStore
from tests.conftest import EtcdHandle, etcdctl_binary
from tests.helpers import eventually

LAYOUT = KeyLayout("/cm")
SCOPE = Scope("prod", "b")

UNUSABLE = [
    r'"\ud800"',
    r'{"k": "x\udfff"}',
    r'{"\udc00": 1}',
    r'["ok", "\ud83d"]',
    "NaN",
    "9007199254740993",
]


@pytest.mark.parametrize("text", UNUSABLE)
def test_an_unusable_value_is_skipped_and_the_scope_still_resolves(text: str) -> None:
    store = server_store(LAYOUT)
    plane = SnapshotPlane(store)
    key = LAYOUT.config_key(Layer.svc("prod", "b"), "s")
    store.replace([KeyValue(LAYOUT.config_key(Layer.defaults(), "a"), b"1", 2)], revision=2)
    plane.apply(store.apply([Event(False, key, text.encode(), 3)]))
    assert key in store.bad_keys
    snap = plane.current(SCOPE)
    assert snap.config == {"a": 1}
    plane.apply(store.apply([Event(False, LAYOUT.config_key(Layer.defaults(), "a"), b"2", 4)]))
    assert plane.current(SCOPE).config == {"a": 2}


def test_a_key_that_is_not_utf8_is_skipped_and_its_delete_forgets_it() -> None:
    store = ConfigStore(LAYOUT)
    bad = (LAYOUT.config_key(Layer.env("prod"), "").encode() + b"\xff\xfe").decode(errors="surrogateescape")
    store.replace([KeyValue(bad, b"1", 2)], revision=2)
    assert store.bad_keys.keys() == {bad}
    store.apply([Event(True, bad, b"", 3)])
    assert store.bad_keys == {}
    assert store.entries(Layer.env("prod")) == {}


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_text, st.booleans())
def test_any_json_text_is_either_refused_or_resolves_hashes_and_serializes(
    value: object, ascii_: bool
) -> None:
    """Property: whatever JSON text lands in etcd, the value is refused with InvalidArgument or it resolves
    into a snapshot that hashes and encodes (the steps a Watch push takes)."""
    text = json.dumps(value, ensure_ascii=ascii_).encode(errors="surrogatepass")
    try:
        parse_json_value(text, path="s")
    except InvalidArgument:
        return
    store = server_store(LAYOUT)
    plane = SnapshotPlane(store)
    plane.apply(store.replace([KeyValue(LAYOUT.config_key(Layer.svc("prod", "b"), "s"), text, 2)], 2))
    snap = plane.current(SCOPE)
    assert snap.hash == format_hash(snap.digest)
    json.dumps(snap.config, ensure_ascii=False, allow_nan=False).encode()


@given(st.text())
def test_loads_json_refuses_only_what_utf8_cannot_carry(text: str) -> None:
    raw = json.dumps(text)  # ASCII with \u escapes: lone surrogates included
    try:
        assert loads_json(raw) == text
        text.encode()
    except ValueError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def put_bytes(etcd: EtcdHandle, key: bytes, value: bytes) -> None:
    argv = [etcdctl_binary().encode(), f"--endpoints={etcd.endpoint}".encode(), b"put", key, value]
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)


async def test_etcdctl_writes_a_lone_surrogate_and_every_scope_keeps_moving(
    server: ConfmeshServer,
    admin: AdminClient,
    etcd: EtcdHandle,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attack as reported: a watcher on the scope, then the bad value, then writes elsewhere."""
    await admin.put("x", 1, env="prod", service="b")
    async with (
        ConfigClient(server.address, environment="prod", service="b") as victim,
        ConfigClient(server.address, environment="prod", service="other") as bystander,
    ):
        with caplog.at_level(logging.WARNING, logger="confmesh"):
            await asyncio.to_thread(etcd.ctl, "put", f"{prefix}/config/service/prod/b/s", r'"\ud800"')
            await asyncio.to_thread(put_bytes, etcd, f"{prefix}/config/env/prod/".encode() + b"bad\xff", b"1")
            later = await admin.put("y", 2, env="prod", service="other")
            await bystander.wait_for_version(later.revision, timeout=5)
            assert bystander.config == {"y": 2}
            resolved = await admin.resolve("prod", "b")  # the victim's scope still resolves
            assert resolved.config == {"x": 1}
            status = await admin.status()
            assert not status.stale and status.revision >= later.revision
            both = await admin.put("z", 3, env="prod")
            await victim.wait_for_version(both.revision, timeout=5)
            assert victim.config == {"x": 1, "z": 3}
        logged = [r.getMessage() for r in caplog.records if "ignoring unusable etcd key" in r.getMessage()]
        assert any("/config/service/prod/b/s" in m and "surrogate" in m for m in logged), logged
        assert any("not UTF-8" in m for m in logged), logged
        # Deleting the bad key is an ordinary change; nothing needs a restart.
        await asyncio.to_thread(etcd.ctl, "del", f"{prefix}/config/service/prod/b/s")
        await eventually(lambda: f"{prefix}/config/service/prod/b/s" not in server.store.bad_keys)


def test_nan_is_still_refused_by_the_value_reader() -> None:
    with pytest.raises(InvalidArgument, match="not a finite number"):
        parse_json_value(b"NaN")
    assert math.isnan(loads_json("NaN"))  # loads_json only guards what UTF-8 cannot carry

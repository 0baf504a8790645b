"""What a write costs grows with what it changes, not with what is stored: values decoded once per
mod revision, flag sets re-parsed only where they differ, value sizes computed once, answers encoded
once per layer version. Pure units; tests/security/test_delivery_isolation.py runs the attacks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from confmesh import errors
from confmesh.keys import Layer
from confmesh.server.admin_base import EncodedLayers
from confmesh.server.snapshot_size import entries_bytes, remember_size
from confmesh.server.writer import FEW_FLAGS, DecodedValues, FlagSetChecks
from confmesh.wire import to_struct


def flag(n: int, enabled: bool = True) -> dict[str, Any]:
    return {
        "key": f"f{n}",
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "enabled": enabled,
    }


def test_a_value_is_decoded_once_per_mod_revision_and_the_cache_is_bounded() -> None:
    decoded = DecodedValues(max_bytes=100)
    first = decoded.decode("/k", 3, b'{"a": [1, 2]}', "k")
    assert decoded.decode("/k", 3, b"ignored: the revision names the value", "k") is first
    assert decoded.decode("/k", 4, b'{"a": 3}', "k") == {"a": 3}  # a new revision is a new value
    with pytest.raises(errors.InvalidArgument):
        decoded.decode("/bad", 5, b"{oops", "bad")
    assert not decoded.known("/bad", 5)  # refusals are not kept
    for n in range(20):
        decoded.decode(f"/x{n}", 6, b'"0123456789"', f"x{n}")
    assert decoded._bytes <= 100 and not decoded.known("/k", 3)  # least recently read went first


def test_a_flag_set_is_parsed_again_only_where_it_differs() -> None:
    checks, layer = FlagSetChecks(), Layer.flags("prod")
    flags: dict[str, Any] = {f"f{n}": flag(n) for n in range(200)}
    assert checks.costly(layer, flags)  # nothing validated yet: a whole parse
    checks.check(layer, flags)
    one = {**flags, "f7": flag(7, enabled=False)}
    assert not checks.costly(layer, one)
    checks.check(layer, one)
    many = {**one, **{f"f{n}": flag(n, enabled=False) for n in range(FEW_FLAGS + 1)}}
    assert checks.costly(layer, many)
    broken = {**one, "f9": {"key": "f9", "variants": {"on": True}, "default_variant": "nope"}}
    with pytest.raises(errors.InvalidArgument) as refused:
        checks.check(layer, broken)
    assert refused.value.field.startswith("flags.f9")  # the same error a whole parse gives


def test_value_sizes_are_computed_once_per_value_object() -> None:
    value = {"a": "é" * 10}
    entries = {"k": value}
    size = entries_bytes(entries)
    assert size == len("k") + len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    remember_size(value, 999)  # what a decode of 999 bytes says
    assert entries_bytes(entries) == 1 + 999
    assert entries_bytes({"k": {"a": "é" * 10}}) == size  # an equal but other object is measured


async def test_a_layer_is_encoded_once_per_version() -> None:
    encoded, calls = EncodedLayers(), []

    def encode(entries: dict[str, Any]) -> Any:
        calls.append(len(entries))
        return to_struct(entries)

    layer = Layer.flags("prod")
    big = {f"f{n}": flag(n) for n in range(EncodedLayers.MANY + 1)}  # encoded off the event loop
    first = await encoded.get((layer, 5), big, encode)
    assert await encoded.get((layer, 5), big, encode) is first and calls == [len(big)]
    await encoded.get((layer, 6), {"a": 1}, encode)
    assert calls == [len(big), 1]

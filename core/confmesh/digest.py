"""The snapshot hash: a sum of per-leaf hashes, so a change updates it in time proportional to the change.

A snapshot's content is two documents, ``config`` and ``flags``. Each leaf
(a value that is not an object, or an empty object) at a path contributes
``SHA-256(canonical([section, *path, value]))`` read as a big-endian integer,
and the hash is the sum of the contributions modulo 2**256, written as
``<scheme>:<64 lowercase hex digits>``. Replacing the subtree at a path
subtracts the old subtree's leaves and adds the new ones, without touching the
rest; the full-document computation gives the same number.

Two schemes differ only in ``canonical``:

* ``jcs-leafsum256`` (current): RFC 8785, the JSON Canonicalization Scheme:
  numbers as ECMAScript prints them, object keys in UTF-16 code unit order. Any
  language can compute it; docs/watch-protocol.md specifies it and
  ``tests/data/hash_vectors.json`` holds test vectors.
* ``leafsum256`` (before 0.2): Python's ``json.dumps`` (``repr`` floats, keys in
  code point order). Servers still answer clients that ask for nothing else.

The sum detects corruption and bugs (a wrong delta, a damaged cache file); it
is not meant to resist a forger, which TLS is for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import rfc8785

JCS = "jcs-leafsum256"
LEAFSUM = "leafsum256"
# Most preferred first: what a client offers, and what a server picks from.
SCHEMES = (JCS, LEAFSUM)
MODULUS = 1 << 256
# The largest integer RFC 8785 (as implemented) takes as one; the wire allows ±2**53, exact as a double.
_JCS_INT = (1 << 53) - 1

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _as_doubles(value: Any) -> Any:
    """`value` with integers beyond ±(2**53 - 1) as floats, which RFC 8785 prints the same way."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return float(value) if abs(value) > _JCS_INT else value
    if isinstance(value, Mapping):
        return {k: _as_doubles(v) for k, v in value.items()}
    return [_as_doubles(v) for v in value]


def jcs_bytes(items: list[Any]) -> bytes:
    """RFC 8785 canonical JSON of `items` ([section, *path, value]).

    For a string, integer, boolean or null value, the standard library's output
    is already canonical (both escape only quote, backslash and control
    characters, with lowercase hex) and several times faster; floats and
    containers go through ``rfc8785``. tests/core/test_digest.py checks the two
    agree.
    """
    value = items[-1]
    kind = type(value)
    if value is None or kind is str or kind is bool or (kind is int and -_JCS_INT <= value <= _JCS_INT):
        return _dumps(items).encode()
    return rfc8785.dumps(_as_doubles(items))


def legacy_bytes(items: list[Any]) -> bytes:
    return _dumps(items).encode()


_CANONICAL: dict[str, Callable[[list[Any]], bytes]] = {JCS: jcs_bytes, LEAFSUM: legacy_bytes}


def _leaves(canonical: Callable[[list[Any]], bytes], section: str, path: list[str], value: Any) -> int:
    if isinstance(value, dict) and value:
        total = 0
        for key, child in value.items():
            path.append(key)
            total += _leaves(canonical, section, path, child)
            path.pop()
        return total
    return int.from_bytes(hashlib.sha256(canonical([section, *path, value])).digest(), "big")


def subtree_sum(section: str, path: Sequence[str], value: Any, scheme: str = JCS) -> int:
    """The contribution of `value` placed at `path` of `section` (0 for the empty document)."""
    canonical = _CANONICAL[scheme]
    if not path:
        if not isinstance(value, Mapping):
            raise TypeError("a section's root must be an object")
        return sum(_leaves(canonical, section, [key], child) for key, child in value.items()) % MODULUS
    return _leaves(canonical, section, list(path), value) % MODULUS


def snapshot_digest(config: Mapping[str, Any], flags: Mapping[str, Any], scheme: str = JCS) -> int:
    return (subtree_sum("config", (), config, scheme) + subtree_sum("flags", (), flags, scheme)) % MODULUS


def format_hash(digest: int, scheme: str = JCS) -> str:
    return f"{scheme}:{digest:064x}"


def snapshot_hash(config: Mapping[str, Any], flags: Mapping[str, Any], scheme: str = JCS) -> str:
    """The hash a snapshot carries: over its config and its flags together."""
    return format_hash(snapshot_digest(config, flags, scheme), scheme)


def scheme_of(hash_: str) -> str | None:
    """The scheme a hash string was made with, or None if it is not one of ours."""
    scheme, sep, hexdigits = hash_.partition(":")
    if not sep or scheme not in _CANONICAL or len(hexdigits) != 64:
        return None
    return scheme


def pick_scheme(offered: Sequence[str]) -> str | None:
    """The scheme a server answers a peer with: the first it knows of those offered.

    A peer that offers none predates the choice and gets ``leafsum256``; one
    that offers only unknown schemes gets None.
    """
    if not offered:
        return LEAFSUM
    return next((s for s in offered if s in _CANONICAL), None)


def matches(hash_: str, config: Mapping[str, Any], flags: Mapping[str, Any]) -> bool:
    """Whether `hash_` (of any known scheme) is the hash of these documents."""
    scheme = scheme_of(hash_)
    return scheme is not None and snapshot_hash(config, flags, scheme) == hash_

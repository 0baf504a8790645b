"""The snapshot hash: a sum of per-leaf hashes, so a change updates it in time proportional to the change.

A snapshot's content is two documents, ``config`` and ``flags``. Each leaf
(a value that is not an object, or an empty object) at a path contributes
``SHA-256(canonical JSON of [section, *path, value])`` read as an integer, and
the hash is the sum of the contributions modulo 2**256. Replacing the subtree
at a path subtracts the old subtree's leaves and adds the new ones, without
touching the rest; the full-document computation gives the same number.

The sum detects corruption and bugs (a wrong delta, a damaged cache file); it
is not meant to resist a forger, which TLS is for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "leafsum256:"
MODULUS = 1 << 256

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _leaves(section: str, path: list[str], value: Any) -> int:
    if isinstance(value, dict) and value:
        total = 0
        for key, child in value.items():
            path.append(key)
            total += _leaves(section, path, child)
            path.pop()
        return total
    raw = _dumps([section, *path, value]).encode()
    return int.from_bytes(hashlib.sha256(raw).digest(), "big")


def subtree_sum(section: str, path: Sequence[str], value: Any) -> int:
    """The contribution of `value` placed at `path` of `section` (0 for the empty document)."""
    if not path:
        if not isinstance(value, Mapping):
            raise TypeError("a section's root must be an object")
        return sum(_leaves(section, [key], child) for key, child in value.items()) % MODULUS
    return _leaves(section, list(path), value) % MODULUS


def snapshot_digest(config: Mapping[str, Any], flags: Mapping[str, Any]) -> int:
    return (subtree_sum("config", (), config) + subtree_sum("flags", (), flags)) % MODULUS


def format_hash(digest: int) -> str:
    return f"{PREFIX}{digest:064x}"


def snapshot_hash(config: Mapping[str, Any], flags: Mapping[str, Any]) -> str:
    """The hash a snapshot carries: over its config and its flags together."""
    return format_hash(snapshot_digest(config, flags))

"""What etcd holds and sends, as plain values: the seam between the etcd adapter and the pure store.

The store, the resolver and their tests use these without importing grpc or etcd3aio.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Event:
    deleted: bool
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    events: tuple[Event, ...]
    header_revision: int
    compact_revision: int = 0
    canceled: bool = False
    cancel_reason: str = ""


__all__ = ["Event", "KeyValue", "WatchBatch"]

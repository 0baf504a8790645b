"""Which version every instance runs, and who rejected what (xDS-style ledger).

An observer of the Watch streams: the servicer reports subscribe, send, ACK,
NACK and disconnect; the ledger answers status queries. Disconnected
instances stay listed for `retention` seconds so a crash-looping instance's
last NACK is still visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confmesh.keys import Scope


@dataclass
class NackInfo:
    version: int
    hash: str
    error: str
    field_paths: list[str]
    at: float


@dataclass
class InstanceRecord:
    stream_id: int
    instance_id: str
    scope: Scope
    peer: str
    labels: dict[str, str]
    connected_at: float
    last_seen: float
    connected: bool = True
    acked_version: int = 0
    acked_hash: str = ""
    sent_version: int = 0
    last_nack: NackInfo | None = None
    disconnected_at: float = 0.0


class Ledger:
    def __init__(self, *, retention: float = 600.0, max_records: int = 10_000) -> None:
        self.retention = retention
        self.max_records = max_records
        self._records: dict[int, InstanceRecord] = {}

    def connect(
        self,
        stream_id: int,
        *,
        instance_id: str,
        scope: Scope,
        peer: str,
        labels: dict[str, str],
        known_version: int,
        known_hash: str,
    ) -> InstanceRecord:
        now = time.time()
        self._prune(now)
        record = InstanceRecord(
            stream_id=stream_id,
            instance_id=instance_id,
            scope=scope,
            peer=peer,
            labels=labels,
            connected_at=now,
            last_seen=now,
            acked_version=known_version,
            acked_hash=known_hash,
        )
        # A reconnecting instance replaces its own disconnected record.
        for sid, old in list(self._records.items()):
            if not old.connected and old.instance_id == instance_id and old.scope == scope:
                del self._records[sid]
        self._records[stream_id] = record
        return record

    def sent(self, stream_id: int, version: int) -> None:
        record = self._records.get(stream_id)
        if record:
            record.sent_version = version
            record.last_seen = time.time()

    def ack(self, stream_id: int, version: int, hash_: str) -> None:
        record = self._records.get(stream_id)
        if record:
            record.acked_version = version
            record.acked_hash = hash_
            record.last_seen = time.time()

    def seen(self, stream_id: int) -> None:
        record = self._records.get(stream_id)
        if record:
            record.last_seen = time.time()

    def nack(self, stream_id: int, version: int, hash_: str, error: str, field_paths: list[str]) -> None:
        record = self._records.get(stream_id)
        if record:
            now = time.time()
            record.last_nack = NackInfo(version, hash_, error, field_paths, now)
            record.last_seen = now

    def disconnect(self, stream_id: int) -> None:
        record = self._records.get(stream_id)
        if record:
            record.connected = False
            record.disconnected_at = time.time()

    def records(self) -> list[InstanceRecord]:
        self._prune(time.time())
        return sorted(self._records.values(), key=lambda r: (r.scope, r.instance_id, -r.connected_at))

    def _prune(self, now: float) -> None:
        for sid, record in list(self._records.items()):
            if not record.connected and now - record.disconnected_at > self.retention:
                del self._records[sid]
        if len(self._records) > self.max_records:
            gone = sorted(
                (r for r in self._records.values() if not r.connected), key=lambda r: r.disconnected_at
            )
            for record in gone[: len(self._records) - self.max_records]:
                del self._records[record.stream_id]

"""Which version every instance runs, and who rejected what (xDS-style ledger).

An observer of the Watch streams: the servicer reports subscribe, send, ACK,
NACK and disconnect; the ledger answers status queries. Disconnected
instances stay listed for `retention` seconds so a crash-looping instance's
last NACK is still visible, at most `max_records` of them.

Every operation on a stream is O(1) whatever the ledger holds: a reconnect
finds its own old record through an index, and expired records are dropped
from the front of a list kept in disconnect order. What a peer sends is
capped before it is kept (``confmesh.server.limits``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from confmesh.keys import Scope
from confmesh.server.limits import MAX_NACK_ERROR, clip, clip_labels, clip_paths


@dataclass(slots=True)
class NackInfo:
    version: int
    hash: str
    error: str
    field_paths: list[str]
    at: float


@dataclass(slots=True)
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
    # The replica holding the stream (the fleet view joins every replica's records).
    server_id: str = ""
    # The relays the instance is connected through, nearest the replica first ("eu/eu-zone-a");
    # "" when it is connected to the replica itself.
    via: str = ""

    def sort_key(self) -> tuple[str, str, str, float, str, int]:
        return (self.scope.environment, self.scope.service, self.instance_id, -self.connected_at,
                self.server_id + "/" + self.via, self.stream_id)  # fmt: skip


class Ledger:
    def __init__(self, *, retention: float = 600.0, max_records: int = 10_000, server_id: str = "") -> None:
        self.server_id = server_id
        self.retention = retention
        self.max_records = max_records
        self._records: dict[int, InstanceRecord] = {}
        # Disconnected records, oldest disconnect first; and each (scope, instance)'s one among them.
        self._gone: OrderedDict[int, InstanceRecord] = OrderedDict()
        self._gone_by_instance: dict[tuple[Scope, str], int] = {}
        # Moves on every connect, send, ACK, NACK and disconnect (live views poll it).
        self.generation = 0

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
        self.generation += 1
        self._prune(now)
        record = InstanceRecord(
            stream_id=stream_id,
            instance_id=instance_id,
            scope=scope,
            peer=clip(peer, 256),
            labels=clip_labels(labels),
            connected_at=now,
            last_seen=now,
            acked_version=known_version,
            acked_hash=known_hash,
            # A resume was sent its version before (by this replica or another): a resume that is
            # already current is sent nothing, and must not read as "sent 0, pending".
            sent_version=known_version,
            server_id=self.server_id,
        )
        old = self._gone_by_instance.pop((scope, instance_id), None)  # a reconnect replaces its record
        if old is not None:
            self._gone.pop(old, None)
            self._records.pop(old, None)
        self._records[stream_id] = record
        return record

    def sent(self, stream_id: int, version: int) -> None:
        self.generation += 1
        record = self._records.get(stream_id)
        if record:
            record.sent_version = version
            record.last_seen = time.time()

    def ack(self, stream_id: int, version: int, hash_: str) -> None:
        self.generation += 1
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
        self.generation += 1
        record = self._records.get(stream_id)
        if record:
            now = time.time()
            record.last_nack = NackInfo(
                version, hash_, clip(error, MAX_NACK_ERROR), clip_paths(field_paths), now
            )
            record.last_seen = now

    def disconnect(self, stream_id: int) -> None:
        self.generation += 1
        record = self._records.get(stream_id)
        if record and record.connected:
            record.connected = False
            record.disconnected_at = time.time()
            key = (record.scope, record.instance_id)
            earlier = self._gone_by_instance.get(key)
            if earlier is not None:  # two streams of one instance: keep the newer's record
                self._gone.pop(earlier, None)
                self._records.pop(earlier, None)
            self._gone[stream_id] = record
            self._gone_by_instance[key] = stream_id
            self._prune(record.disconnected_at)

    def records(self) -> list[InstanceRecord]:
        self._prune(time.time())
        return sorted(self._records.values(), key=InstanceRecord.sort_key)

    def __len__(self) -> int:
        return len(self._records)

    def _prune(self, now: float) -> None:
        while self._gone:
            sid, oldest = next(iter(self._gone.items()))
            if now - oldest.disconnected_at <= self.retention and len(self._gone) <= self.max_records:
                break
            del self._gone[sid]
            self._records.pop(sid, None)
            key = (oldest.scope, oldest.instance_id)
            if self._gone_by_instance.get(key) == sid:
                del self._gone_by_instance[key]

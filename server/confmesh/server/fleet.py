"""The fleet view: every replica's instances, from any replica, through leased summaries in etcd.

Each replica publishes its ledger as compressed JSON summaries under ``P/fleet/<server id>/<chunk>``,
attached to a lease of its own. A summary is written at most once per interval and only when
the ledger changed in what it shows (versions, NACKs, connections; not last-seen times), so an
ACK costs etcd nothing and a busy fleet costs a few writes per replica per interval. The lease
is renewed every interval and revoked on shutdown; a replica that dies stops renewing and etcd
deletes its summaries when the TTL runs out, so its instances leave every view within the TTL
and reappear where they reconnect. Every replica already watches the whole prefix, so the
others' summaries reach its store like any other key: reading the view costs no etcd call.
Why summaries and not queries between replicas: docs/design.md ("The fleet view").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confmesh.errors import ConfmeshError, InvalidArgument
from confmesh.keys import KeyLayout, Scope
from confmesh.merge import loads_json
from confmesh.server.etcd import Etcd
from confmesh.server.ledger import InstanceRecord, NackInfo
from confmesh.server.limits import clip
from confmesh.server.usage import HOUR, FlagUsageStore
from confmesh.v1 import admin_pb2

log = logging.getLogger("confmesh.server.fleet")

# One etcd value per chunk of this many records (about 230 KiB of JSON, 25-45 KiB compressed).
CHUNK_RECORDS = 1_000
# At most this much per etcd transaction (and half of etcd's request limit): a large ledger
# is published in several.
TXN_BYTES = 1 << 20
FORMAT = 1
# A chunk of 1,000 records is about 250 KB of JSON; far more is not a summary.
MAX_SUMMARY_BYTES = 16 * 1024 * 1024
MAX_VIA = 512


class Instances(Protocol):
    """This replica's instances: its ledger's, and those relays below it report."""

    def records(self) -> list[InstanceRecord]: ...


def _row(r: InstanceRecord) -> list[Any]:
    nack = None
    if r.last_nack is not None:
        n = r.last_nack
        nack = [n.version, n.hash, n.error, n.field_paths, n.at]
    return [r.stream_id, r.instance_id, r.scope.environment, r.scope.service, r.peer, r.labels,
            r.connected_at, r.last_seen, r.connected, r.acked_version, r.acked_hash, r.sent_version,
            nack, r.disconnected_at, *([r.via] if r.via else [])]  # fmt: skip


def _record(server_id: str, row: list[Any]) -> InstanceRecord:
    (stream_id, instance_id, env, service, peer, labels, connected_at, last_seen, connected,
     acked_version, acked_hash, sent_version, nack, disconnected_at, *via) = row  # fmt: skip
    if len(via) > 1:
        raise ValueError("a fleet row has at most 15 fields")
    return InstanceRecord(
        stream_id=int(stream_id),
        instance_id=str(instance_id),
        scope=Scope.checked(env, service),
        peer=str(peer),
        labels={str(k): str(v) for k, v in dict(labels).items()},
        connected_at=float(connected_at),
        last_seen=float(last_seen),
        connected=bool(connected),
        acked_version=int(acked_version),
        acked_hash=str(acked_hash),
        sent_version=int(sent_version),
        last_nack=None
        if nack is None
        else NackInfo(int(nack[0]), str(nack[1]), str(nack[2]), [str(p) for p in nack[3]], float(nack[4])),
        disconnected_at=float(disconnected_at),
        server_id=server_id,
        via=clip(str(via[0]), MAX_VIA) if via else "",
    )


def encode(records: list[InstanceRecord]) -> list[bytes]:
    """The summary values of `records`, one per chunk (at least one, so an empty ledger shows)."""
    return encode_rows([_row(r) for r in records])


def encode_rows(rows: list[list[Any]]) -> list[bytes]:
    """zlib-compressed JSON per chunk (a 10,000-instance ledger: about 2.3 MB of JSON, 5-10x
    less compressed). Pure CPU on plain lists: run it off the event loop."""
    chunks = [rows[i : i + CHUNK_RECORDS] for i in range(0, len(rows), CHUNK_RECORDS)] or [[]]
    return [zlib.compress(json.dumps({"v": FORMAT, "records": c}, separators=(",", ":")).encode(), 6)
            for c in chunks]  # fmt: skip


def inflate(value: bytes, limit: int = MAX_SUMMARY_BYTES) -> bytes:
    """`value` decompressed, refused (ValueError) past `limit` bytes: summaries come from peers."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(value, limit)
    if inflater.unconsumed_tail:
        raise ValueError(f"a fleet summary inflates past {limit} bytes")
    return out


def decode(server_id: str, value: bytes) -> list[InstanceRecord]:
    try:
        doc = loads_json(inflate(value))
        if doc.get("v") != FORMAT:
            return []
        return [_record(server_id, row) for row in doc["records"]]
    except (ValueError, TypeError, KeyError, IndexError, zlib.error, InvalidArgument) as exc:
        log.warning("ignoring an unreadable fleet summary of %s: %s", server_id, exc)
        return []


def _shown(records: Iterable[InstanceRecord]) -> int:
    """What a republish would change: everything but last-seen times."""
    return hash(tuple(
        (r.stream_id, r.instance_id, r.scope, r.connected, r.acked_version, r.acked_hash, r.sent_version,
         None if r.last_nack is None else (r.last_nack.version, r.last_nack.at),
         tuple(sorted(r.labels.items())))
        for r in records
    ))  # fmt: skip


class FleetView:
    """This replica's ledger joined with every other replica's published summary."""

    def __init__(
        self, ledger: Instances, summaries: Mapping[tuple[str, str], tuple[bytes, int]], server_id: str
    ) -> None:
        self.ledger = ledger
        # (server id, chunk) -> (value, mod revision): kept by the store (record_kinds.FLEET).
        self.summaries = summaries
        self.server_id = server_id
        self._decoded: dict[tuple[str, str], tuple[int, list[InstanceRecord]]] = {}

    def replicas(self) -> list[str]:
        return sorted({self.server_id, *(server_id for server_id, _ in self.summaries)})

    def covers(self, revision: int) -> bool:
        """Has every other replica published since etcd `revision`? A decision over the fleet
        (auto-abort) waits for that, so a replica whose summary predates a rollout is never
        left out of the count."""
        return all(rev > revision for _, rev in self.summaries.values())

    def records(self, *, local: bool = False) -> list[InstanceRecord]:
        gathered = self.gather(local=local)
        return gathered if local else _dedupe(gathered)

    def joined(self, *, local: bool = False) -> Callable[[], list[InstanceRecord]]:
        """What `records` answers, as a function to run off the event loop: the gathering (cheap,
        reading live state) happens now, the join and sort (the cost, at 10,000s of instances)
        when it is called."""
        gathered = self.gather(local=local)
        return (
            (lambda: sorted(gathered, key=InstanceRecord.sort_key)) if local else (lambda: _dedupe(gathered))
        )

    def gather(self, *, local: bool = False) -> list[InstanceRecord]:
        """This replica's records and every other replica's, not yet joined (on the event loop)."""
        own = self.ledger.records()
        if local:
            return own
        merged = list(own)
        live: set[tuple[str, str]] = set()
        for (server_id, chunk), (value, revision) in list(self.summaries.items()):
            if server_id == self.server_id:
                continue
            cached = self._decoded.get((server_id, chunk))
            if cached is None or cached[0] != revision:
                cached = (revision, decode(server_id, value))
                self._decoded[(server_id, chunk)] = cached
            live.add((server_id, chunk))
            merged.extend(cached[1])
        for gone in self._decoded.keys() - live:
            del self._decoded[gone]
        return merged


def _dedupe(records: list[InstanceRecord]) -> list[InstanceRecord]:
    """An instance that reconnected elsewhere is shown where it is connected: its disconnected
    records on other replicas are dropped; of several disconnected ones, the newest stays."""
    connected = {(r.scope, r.instance_id) for r in records if r.connected}
    newest_gone: dict[tuple[Scope, str], InstanceRecord] = {}
    for r in records:
        key = (r.scope, r.instance_id)
        if not r.connected and key not in connected:
            kept = newest_gone.get(key)
            if kept is None or r.disconnected_at > kept.disconnected_at:
                newest_gone[key] = r
    # One stream is one record, even while a publish spread over several transactions shows
    # it in an old chunk and a new one.
    streams = {(r.server_id, r.via, r.stream_id): r for r in records if r.connected}
    out = [*streams.values(), *newest_gone.values()]
    return sorted(out, key=InstanceRecord.sort_key)


class FleetPublisher:
    """Publishes this replica's ledger under its lease (see the module docstring)."""

    def __init__(
        self,
        etcd: Etcd,
        layout: KeyLayout,
        ledger: Instances,
        server_id: str,
        *,
        interval: float = 2.0,
        ttl: int = 10,
        refresh: float = 30.0,
        epoch: Callable[[], object] = lambda: None,
    ) -> None:
        """`epoch`: publish again whenever it changes, ledger changed or not (the rollout
        records: a decider waits for every replica's summary to be newer than the rollout)."""
        self.etcd, self.layout, self.ledger, self.server_id = etcd, layout, ledger, server_id
        self.interval, self.ttl, self.refresh, self.epoch = interval, ttl, refresh, epoch
        self.lease = 0
        self.published_chunks = 0
        self.writes = 0  # etcd transactions written (for the bench and tests)
        self._shown: int | None = None
        self._published_at = 0.0
        # Chunk index -> the value etcd holds for it under the current lease.
        self._written: dict[int, bytes] = {}
        self._epoch: object = None

    def root(self) -> str:
        return f"{self.layout.fleet_root}{self.server_id}/"

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except ConfmeshError as exc:
                log.warning("could not publish this replica's fleet summary: %s", exc.message)
                self._shown = None  # publish again once etcd answers
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        if self.lease and await self.etcd.keep_lease(self.lease) <= 0:
            log.warning("fleet lease %x expired; publishing under a new one", self.lease)
            self.lease, self._shown = 0, None
        if not self.lease:
            self.lease = await self.etcd.grant_lease(self.ttl)
            self._shown, self._written = None, {}  # the old lease took every chunk with it
        records = self.ledger.records()
        epoch = self.epoch()

        def summarize() -> tuple[int, list[list[Any]]]:
            # Off the event loop: at 10,000 instances this is tens of milliseconds every interval.
            # The loop may update a record meanwhile; a row read mid-update is republished next tick.
            return hash((_shown(records), epoch)), [_row(r) for r in records]

        shown, rows = await asyncio.to_thread(summarize)
        now = time.monotonic()
        if shown == self._shown and now - self._published_at < self.refresh:
            return
        if now - self._published_at >= self.refresh or epoch != self._epoch:
            # Rewrite all: last-seen times and any chunk lost meanwhile; and on a new epoch every
            # chunk must be newer than it (FleetView.covers), changed or not.
            self._written = {}
        self._epoch = epoch
        root = self.root()
        values = await asyncio.to_thread(encode_rows, rows)
        # Only the chunks whose content changed, in transactions that etcd accepts.
        puts = [(i, v) for i, v in enumerate(values) if self._written.get(i) != v]
        ops = [(i, Etcd.put_op_leased(f"{root}{i:04d}", v, self.lease)) for i, v in puts]
        ops += [(i, Etcd.delete_op(f"{root}{i:04d}")) for i in range(len(values), self.published_chunks)]
        budget = min(TXN_BYTES, self.etcd.max_request_bytes // 2)
        batch: list[tuple[int, Any]] = []
        size = 0
        for item in ops:
            item_size = item[1].ByteSize()
            if batch and size + item_size > budget:
                await self._commit(batch, values)
                batch, size = [], 0
            batch.append(item)
            size += item_size
        if batch:
            await self._commit(batch, values)
        for i in range(len(values), self.published_chunks):
            self._written.pop(i, None)
        self.published_chunks = len(values)
        self._shown, self._published_at = shown, now

    async def _commit(self, batch: list[tuple[int, Any]], values: list[bytes]) -> None:
        await self.etcd.txn([], [op for _, op in batch])
        self.writes += 1
        for i, _ in batch:
            if i < len(values):
                self._written[i] = values[i]

    async def withdraw(self) -> None:
        """Shutdown: this replica's instances leave every view now, not after the TTL."""
        if self.lease:
            try:
                await self.etcd.revoke_lease(self.lease)
            except ConfmeshError as exc:
                log.info("fleet lease not revoked (%s); it expires within %ds", exc.message, self.ttl)
            self.lease = 0


@dataclass
class VersionGroup:
    """One version of a scope across the fleet: who runs it, who has not answered, who refused it."""

    version: int
    acked: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    nacked: list[str] = field(default_factory=list)
    # field path -> (instances, one error message)
    rejections: dict[str, tuple[list[str], str]] = field(default_factory=dict)


def version_groups(records: Iterable[InstanceRecord], scope: Scope, version: int = 0) -> list[VersionGroup]:
    """Per version (newest first) of `scope`'s connected instances: ACKed, pending and NACKed
    instances, and the NACKs' field paths grouped. An instance that runs one version and
    rejected a newer one counts under both; `version` keeps that one alone."""
    groups: dict[int, VersionGroup] = {}

    def group(v: int) -> VersionGroup | None:
        if v <= 0 or (version and v != version):
            return None
        return groups.setdefault(v, VersionGroup(v))

    for r in records:
        if not r.connected or r.scope != scope:
            continue
        nack = r.last_nack
        if (g := group(r.acked_version)) is not None:
            g.acked.append(r.instance_id)
        if nack is not None and nack.version != r.acked_version and (g := group(nack.version)) is not None:
            g.nacked.append(r.instance_id)
            for path in nack.field_paths or [""]:
                ids, error = g.rejections.get(path, ([], nack.error))
                ids.append(r.instance_id)
                g.rejections[path] = (ids, error)
        answered = {r.acked_version, nack.version if nack is not None else 0}
        if r.sent_version not in answered and (g := group(r.sent_version)) is not None:
            g.pending.append(r.instance_id)
    return [groups[v] for v in sorted(groups, reverse=True)]


class UsagePublisher:
    """Publishes this replica's flag-usage counts, per hour, for `flags stale` across the fleet.

    ``P/usage/<hour>/<server id>``, rewritten at most once per interval while that hour's
    counts change. Not leased: a stale report looks back a week and must not forget what a
    crashed replica counted. Hours past the usage retention are deleted by whichever replica
    publishes (keys sort by hour, so that is one range delete).
    """

    def __init__(
        self, etcd: Etcd, layout: KeyLayout, usage: FlagUsageStore, server_id: str, *, interval: float = 30.0
    ) -> None:
        self.etcd, self.layout, self.usage, self.server_id = etcd, layout, usage, server_id
        self.interval = interval
        self.writes = 0
        self._pruned = 0

    def key(self, hour: int) -> str:
        return f"{self.layout.usage_root}{hour:010d}/{self.server_id}"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except ConfmeshError as exc:
                log.warning("could not publish this replica's flag usage: %s", exc.message)

    async def tick(self) -> None:
        hours, self.usage.touched = self.usage.touched, set()
        ops = []
        for hour in sorted(hours):
            doc = self.usage.hour_doc(hour)
            if doc:
                ops.append(Etcd.put_op(self.key(hour), json.dumps(doc, separators=(",", ":"))))
        cutoff = int((time.time() - self.usage.retention) // HOUR) * HOUR
        if cutoff > self._pruned:
            root = self.layout.usage_root
            ops.append(Etcd.delete_op(root, range_end=f"{root}{max(cutoff, 0):010d}"))
        if not ops:
            return
        try:
            await self.etcd.txn([], ops)
        except ConfmeshError:
            self.usage.touched |= hours  # published next time
            raise
        self.writes += 1
        self._pruned = max(self._pruned, cutoff)


async def fleet_usage_docs(
    etcd: Etcd, layout: KeyLayout, server_id: str, since: float
) -> list[dict[str, Any]]:
    """Other replicas' published hours that overlap [since, now]."""
    first = int(since // HOUR) * HOUR
    _, kvs = await etcd.list_prefix(layout.usage_root)
    docs = []
    for kv in kvs:
        hour_text, _, owner = kv.key[len(layout.usage_root) :].partition("/")
        if owner == server_id or not hour_text.isdigit() or int(hour_text) < first:
            continue
        try:
            doc = loads_json(kv.value)
        except ValueError:
            continue
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


# What one GetScopeStatus answer holds at most. Versions, field paths and error texts are what
# peers sent (a NACK names any version it likes), so each is bounded, and so is the answer:
# under 1 MiB whatever the fleet's clients say.
SHOWN_VERSIONS = 50
SHOWN_INSTANCES = 20
MAX_REJECTION_PATHS = 20
MAX_EXAMPLE_ERROR = 300


def scope_status(
    records: Iterable[InstanceRecord], scope: Scope, version: int, current: int, replicas: list[str]
) -> admin_pb2.GetScopeStatusResponse:
    """The GetScopeStatus answer: `version_groups` bounded (newest versions first)."""
    records = list(records)
    groups = version_groups(records, scope, version)
    resp = admin_pb2.GetScopeStatusResponse(
        environment=scope.environment,
        service=scope.service,
        current_version=current,
        instances=sum(r.connected and r.scope == scope for r in records),
        replicas=replicas,
        versions_left_out=max(0, len(groups) - SHOWN_VERSIONS),
    )
    for g in groups[:SHOWN_VERSIONS]:
        out = resp.versions.add(
            version=g.version,
            acked=len(g.acked),
            pending=len(g.pending),
            nacked=len(g.nacked),
            acked_instances=sorted(g.acked)[:SHOWN_INSTANCES],
            pending_instances=sorted(g.pending)[:SHOWN_INSTANCES],
            nacked_instances=sorted(g.nacked)[:SHOWN_INSTANCES],
            rejection_paths_left_out=max(0, len(g.rejections) - MAX_REJECTION_PATHS),
        )
        ranked = sorted(g.rejections.items(), key=lambda item: (-len(item[1][0]), item[0]))
        for path, (ids, error) in ranked[:MAX_REJECTION_PATHS]:
            out.rejections.add(
                field_path=path,
                instances=len(ids),
                example_error=clip(error, MAX_EXAMPLE_ERROR),
                example_instances=sorted(ids)[:10],
            )
    return resp

"""The relay's source: one Mirror stream to an upstream confmesh (a ``confmesh serve`` or another
relay) instead of etcd, behind the same seam as ``EtcdSource`` (``serving.Source``).

It lists (or resumes from the revision it holds), applies every change in order to its store and
hands each ``StoreChange`` to the snapshot plane, so the relay resolves the same versions and hashes
as its upstream. Its store's journal is persisted to ``--data-dir`` after each change, so a relay
restarted while its upstream is unreachable serves what it had, marked stale, instead of nothing.
When the link drops it keeps serving, stale, says since when, and resumes from its revision.

A list that would delete most of what the relay holds is not trusted on first sight: the relay
asks again, and serves it only when the second list agrees, so an upstream fault (an empty etcd
behind a misconfigured root) never empties a region.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from confmesh.keys import Layer, Scope
from confmesh.server.access import Grant, Role
from confmesh.server.kv import Event, KeyValue
from confmesh.server.relayed_fleet import LocalInstances
from confmesh.server.serving import StoreBacked
from confmesh.server.store import ConfigStore, StoreChange
from confmesh.tls import TLSConfig, aio_channel
from confmesh.v1 import relay_pb2, relay_pb2_grpc

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "mirror.pb"
# A list that drops more than this share of what the relay holds is asked for twice.
SUSPECT_SHRINK = 0.5
SUSPECT_MIN_KEYS = 10
MAX_MESSAGE = 64 * 1024 * 1024


def _since(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


class LinkLost(Exception):
    """The stream to the upstream ended or broke."""


class UpstreamFault(Exception):
    """The upstream answered something the relay will not serve as it is."""


class RelaySource(StoreBacked):
    def __init__(
        self,
        store: ConfigStore,
        on_change: Callable[[StoreChange], None],
        *,
        upstream: str,
        relay_id: str,
        scopes: list[str],
        instances: LocalInstances,
        tls: TLSConfig | None = None,
        token: str = "",
        data_dir: Path | None = None,
        on_stale_change: Callable[[bool], None] | None = None,
        report_interval: float = 1.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        super().__init__(store, f"upstream {upstream} not reached yet")
        assert store.journal is not None, "a relay's store keeps a journal (it is persisted and relayed on)"
        self.journal = store.journal
        self.on_change = on_change
        self.on_stale_change = on_stale_change
        self.upstream, self.relay_id, self.scopes = upstream, relay_id, scopes
        self.instances = instances
        self.tls, self.token = tls, token
        self.data_dir = data_dir
        self.report_interval = report_interval
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.lists = 0  # full lists applied (a resume applies none)
        self.resumes = 0
        self.contact_lost_at: float | None = None
        self.last_contact = 0.0
        self._suspect: int | None = None  # keys in a list held back once
        self._carried: Grant | None = None  # the scopes the upstream's lists carry
        self._dirty = asyncio.Event()

    # -- the Source seam -----------------------------------------------------------------------

    def start(self) -> None:
        self._load()
        self._tasks = [
            asyncio.create_task(self._run(), name="relay-upstream"),
            asyncio.create_task(self._persist_loop(), name="relay-persist"),
        ]

    async def stop(self) -> None:
        await super().stop()
        if self._dirty.is_set():
            await asyncio.to_thread(self._write, self._snapshot())

    # -- persistence ---------------------------------------------------------------------------

    def _path(self) -> Path | None:
        return None if self.data_dir is None else self.data_dir / SNAPSHOT_FILE

    def _load(self) -> None:
        path = self._path()
        if path is None or not path.exists() or self.store.synced:
            return
        try:
            saved = relay_pb2.MirrorList.FromString(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("cannot read the persisted snapshot %s: %s; waiting for the upstream", path, exc)
            return
        if saved.prefix != self.store.layout.prefix:
            log.warning("the persisted snapshot %s is for prefix %r, not %r; ignored", path, saved.prefix,
                        self.store.layout.prefix)  # fmt: skip
            return
        self._replace(saved)
        at = path.stat().st_mtime
        self.contact_lost_at = at
        self._set_stale(
            f"serving the snapshot persisted at {_since(at)}; upstream {self.upstream} not reached yet"
        )
        log.info(
            "serving the persisted snapshot at revision %d until %s answers", saved.revision, self.upstream
        )

    def _snapshot(self) -> bytes:
        part = relay_pb2.MirrorList(
            revision=self.journal.revision, last=True, prefix=self.store.layout.prefix
        )
        part.keys.extend(
            relay_pb2.MirrorKey(key=kv.key, value=kv.value, mod_revision=kv.mod_revision)
            for kv in self.journal.keys.values()
        )
        part.layer_revisions.extend(
            relay_pb2.LayerRevision(layer=layer.path, revision=rev)
            for layer, rev in self.store.layer_revisions().items()
        )
        return part.SerializeToString()

    def _write(self, data: bytes) -> None:
        path = self._path()
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def _persist_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.2)  # a burst of changes is one write
            self._dirty.clear()
            data = self._snapshot()
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                log.warning("cannot persist the relay's snapshot: %s", exc)

    # -- the upstream stream -------------------------------------------------------------------

    def _set_stale(self, reason: str) -> None:
        was = self.stale
        self.stale_reason = reason
        if was != self.stale and self.on_stale_change is not None:
            self.on_stale_change(self.stale)

    async def _hand_on(self, change: StoreChange) -> None:
        if change:
            self.on_change(change)
            self._dirty.set()
        await self._progress.moved()

    def carries(self, scope: Scope) -> bool:
        """Whether this relay carries `scope` (before its first list: it cannot tell yet, and a
        stream waits for the list)."""
        return self._carried is None or self._carried.can_read(scope)

    def carried(self) -> list[str]:
        return ["*"] if self._carried is None else list(self._carried.scopes)

    def _replace(self, listed: relay_pb2.MirrorList) -> StoreChange:
        self._carried = Grant(role=Role.READER, scopes=tuple(listed.carried or ["*"]))
        kvs = [KeyValue(k.key, k.value, k.mod_revision) for k in listed.keys]
        change = self.store.replace(kvs, listed.revision)
        revisions = {}
        for item in listed.layer_revisions:
            with contextlib.suppress(ValueError):
                revisions[Layer.from_path(item.layer)] = item.revision
        self.store.adopt_layer_revisions(revisions)
        if change:
            self.on_change(change)
        return change

    async def _outbox(self, hello: relay_pb2.MirrorRequest) -> AsyncIterator[relay_pb2.MirrorRequest]:
        yield hello
        shown: object = None
        last = 0.0
        while True:
            await asyncio.sleep(self.report_interval)
            generation = (self.instances.generation(), self.stale_reason)
            if generation == shown and time.monotonic() - last < 30:
                continue
            own = relay_pb2.RelayState(
                stale_reason=self.stale_reason,
                lost_at=self.contact_lost_at or 0.0,
                revision=self.store.revision,
            )
            report = await asyncio.to_thread(self.instances.report, own)
            shown, last = generation, time.monotonic()
            yield relay_pb2.MirrorRequest(fleet=report)

    async def _run(self) -> None:
        backoff = self.backoff_initial
        while True:
            attempt = time.time()
            try:
                await self._follow()
            except UpstreamFault as exc:
                log.warning("upstream %s: %s", self.upstream, exc)
            except (grpc.aio.AioRpcError, LinkLost) as exc:
                why = (
                    f"{exc.code().name} {exc.details() or ''}"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else str(exc)
                )
                if self.contact_lost_at is None:
                    self.contact_lost_at = time.time()
                    log.warning("lost upstream %s: %s", self.upstream, why)
                since = _since(self.contact_lost_at)
                self._set_stale(f"upstream {self.upstream} unreachable since {since}: {why.strip()}")
            if self.last_contact >= attempt:  # the stream worked for a while: retry soon
                backoff = self.backoff_initial
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.backoff_max)

    async def _follow(self) -> None:
        """One stream, from hello until it breaks."""
        hello = relay_pb2.MirrorRequest(
            hello=relay_pb2.MirrorHello(
                relay_id=self.relay_id,
                known_revision=self.store.revision if self.store.synced and self._suspect is None else 0,
                scopes=self.scopes,
            )
        )
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
        ]
        async with aio_channel(self.upstream, self.tls, options) as channel:
            call = relay_pb2_grpc.RelayServiceStub(channel).Mirror(self._outbox(hello), metadata=metadata)
            parts: list[relay_pb2.MirrorList] = []
            first = True
            async for msg in call:
                kind = msg.WhichOneof("kind")
                self.last_contact = time.time()
                if kind == "list":
                    parts.append(msg.list)
                    if msg.list.last:
                        await self._listed(parts)
                        parts = []
                        self._contact()
                elif kind == "events":
                    if not self.store.synced:
                        raise UpstreamFault("events before a list")
                    events = [Event(k.deleted, k.key, k.value, k.mod_revision) for k in msg.events.events]
                    change = self.store.apply(events)
                    self._reached(msg.events.revision)
                    if first:
                        self.resumes += 1
                        log.info("resumed from upstream %s with %d event(s), at revision %d", self.upstream,
                                 len(events), self.store.revision)  # fmt: skip
                    self._dirty.set()
                    await self._hand_on(change)
                    self._contact()
                elif kind == "progress" and self.store.synced and self._suspect is None:
                    p = msg.progress
                    if self._reached(p.revision):
                        await self._progress.moved()
                    self._set_stale(f"upstream {self.upstream} is stale: {p.stale_reason}" if p.stale else "")
                first = False
            raise LinkLost("the upstream ended the stream")

    def _reached(self, revision: int) -> bool:
        """The upstream has sent everything this relay carries up to `revision`."""
        if revision <= self.store.revision:
            return False
        self.store.revision = revision
        self.journal.revision = max(self.journal.revision, revision)
        return True

    def _contact(self) -> None:
        if self.contact_lost_at is not None:
            log.info("upstream %s reached again", self.upstream)
        self.contact_lost_at = None
        self._set_stale("")

    async def _listed(self, parts: list[relay_pb2.MirrorList]) -> None:
        listed = relay_pb2.MirrorList(revision=parts[-1].revision, last=True, prefix=parts[-1].prefix)
        listed.carried.extend(parts[-1].carried)
        for part in parts:
            listed.keys.extend(part.keys)
        listed.layer_revisions.extend(parts[-1].layer_revisions)
        if listed.prefix != self.store.layout.prefix:
            raise UpstreamFault(
                f"the upstream's prefix is {listed.prefix!r}, this relay's {self.store.layout.prefix!r}: "
                f"start the relay with --prefix {listed.prefix}"
            )
        held, offered = len(self.journal.keys), len(listed.keys)
        shrinks = held >= SUSPECT_MIN_KEYS and offered < held * (1 - SUSPECT_SHRINK)
        if shrinks and (
            self._suspect is None or offered < self._suspect * 0.9 or offered > self._suspect * 1.1
        ):
            self._suspect = offered
            raise UpstreamFault(f"a list of {offered} keys would replace the {held} this relay holds; "
                                "asking again before serving it")  # fmt: skip
        if shrinks:
            log.warning("upstream %s listed %d keys twice (this relay held %d): serving it", self.upstream,
                        offered, held)  # fmt: skip
        self._suspect = None
        self._replace(listed)
        self.lists += 1
        self._dirty.set()
        await self._progress.moved()


__all__ = ["RelaySource", "UpstreamFault"]

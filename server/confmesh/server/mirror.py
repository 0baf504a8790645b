"""RelayService.Mirror, the upstream's side: one stream per relay carries the part of this server's
key space the relay's identity may read (a list, or the events after the revision it resumes
from), then every change in order, and brings back the relay's subtree of instances.

What a relay may carry is decided key by key: config and flag layers its grant reads
(``Grant.can_read_layer``), schemas and rollouts of scopes it reads, all within the scope patterns
it asked for. Tokens, change requests, fleet and usage documents and audit records are never sent
(``KeyJournal`` does not even keep them). A relay that falls too far behind is sent a fresh list
instead of an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.access import Access, Caller, Grant, Role
from confmesh.server.config_service import abort
from confmesh.server.journal import KeyJournal
from confmesh.server.kv import Event, KeyValue
from confmesh.server.ledger import InstanceRecord
from confmesh.server.relayed_fleet import RelayedFleet
from confmesh.server.serving import ServingState
from confmesh.server.store import ConfigStore
from confmesh.v1 import relay_pb2, relay_pb2_grpc

log = logging.getLogger(__name__)

RELAY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_PATTERNS = 64
MAX_PATTERN = 256
LIST_CHUNK_BYTES = 1 << 20
# A relay with more than this many events not yet sent gets a fresh list instead.
MAX_BACKLOG = 20_000
PROGRESS_INTERVAL = 5.0
HELLO_TIMEOUT = 10.0


def carried(layout: KeyLayout, grant: Grant | None, patterns: list[str]) -> Callable[[str], bool]:
    """Which journal keys a relay with `grant` (None: no policy) that asked for `patterns` gets."""
    wanted = Grant(role=Role.READER, scopes=tuple(patterns)) if patterns else None

    def layer_ok(layer: Layer) -> bool:
        return all(g is None or g.can_read_layer(layer) for g in (grant, wanted))

    def scope_ok(scope: Scope) -> bool:
        return all(g is None or g.can_read(scope) for g in (grant, wanted))

    def carries(key: str) -> bool:
        for root in (layout.schema_root, layout.rollout_root):
            if key.startswith(root):
                env, _, service = key[len(root) :].partition("/")
                return scope_ok(Scope(env, service))
        try:
            parsed = layout.parse(key)
        except errors.InvalidArgument:
            return False
        return parsed is not None and layer_ok(parsed[0])

    return carries


def _key(kv: KeyValue | Event) -> relay_pb2.MirrorKey:
    deleted = isinstance(kv, Event) and kv.deleted
    return relay_pb2.MirrorKey(key=kv.key, value=kv.value, mod_revision=kv.mod_revision, deleted=deleted)


class MirrorStream:
    """One relay's stream: the events waiting to be sent, or that it needs a list."""

    def __init__(self, carries: Callable[[str], bool]) -> None:
        self.carries = carries
        self.pending: list[Event] = []
        self.need_list = False
        # Everything this stream carries up to this revision has been sent (progress says so).
        self.upto = 0
        self.carried = ["*"]
        self.wakeup = asyncio.Event()

    def heard(self, what: str, events: list[Event]) -> None:
        if what == "list":
            self.need_list, self.pending = True, []
        elif not self.need_list:
            self.pending += [ev for ev in events if self.carries(ev.key)]
            if len(self.pending) > MAX_BACKLOG:
                self.need_list, self.pending = True, []
        self.wakeup.set()


class MirrorService(relay_pb2_grpc.RelayServiceServicer):
    def __init__(
        self,
        store: ConfigStore,
        journal: KeyJournal,
        source: ServingState,
        access: Access,
        relayed: RelayedFleet,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
        carried: Callable[[], list[str]] = lambda: ["*"],
    ) -> None:
        """`carried`: what this server itself carries (a relay: what its upstream sends it)."""
        self.carried = carried
        self.store, self.journal, self.source, self.access = store, journal, source, access
        self.relayed = relayed
        self.progress_interval = progress_interval
        self.streams = 0
        self.draining = False
        self._ids = itertools.count(1)
        self._open: set[MirrorStream] = set()

    async def Mirror(
        self,
        request_iterator: AsyncIterator[relay_pb2.MirrorRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[relay_pb2.MirrorResponse]:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("kind") != "hello":
                raise errors.InvalidArgument(
                    "the first message on a Mirror stream must be a hello", code="no_hello"
                )
            hello = first.hello
            if not RELAY_ID.fullmatch(hello.relay_id):
                raise errors.InvalidArgument("hello.relay_id must be 1-64 characters of [A-Za-z0-9._-]",
                                             field="relay_id")  # fmt: skip
            patterns = list(hello.scopes)
            if len(patterns) > MAX_PATTERNS or any(not p or len(p) > MAX_PATTERN for p in patterns):
                raise errors.InvalidArgument(f"hello.scopes takes at most {MAX_PATTERNS} patterns of 1-"
                                             f"{MAX_PATTERN} characters", field="scopes")  # fmt: skip
            if hello.known_revision < 0:
                raise errors.InvalidArgument("hello.known_revision must be >= 0", field="known_revision")
            caller = self.access.identify(context)
            what = f"relay {', '.join(patterns) or 'everything it may read'}"
            self.access.require(
                caller, lambda g: g.role is not Role.SERVICE and all(map(g.can_carry, patterns)), what
            )
        except TimeoutError:
            await abort(context, errors.InvalidArgument("no hello received in time", code="no_hello"))
            return
        except errors.ConfmeshError as exc:
            await self.access.audit_denial(exc, context, "Mirror")
            await abort(context, exc)
            return
        if self.draining:
            await abort(context, errors.Unavailable("server is shutting down", code="draining"))
            return
        grant = caller.grant if self.access.enforcing else None
        stream = MirrorStream(carried(self.store.layout, grant, patterns))
        if patterns:
            stream.carried = patterns
        elif grant is not None and grant.role is not Role.ADMIN:
            stream.carried = list(grant.scopes)
        else:
            stream.carried = self.carried()
        key = (hello.relay_id, next(self._ids))
        self.journal.listen(stream.heard)
        self._open.add(stream)
        self.streams += 1
        reader = asyncio.create_task(self._read(key, hello.relay_id, caller, request_iterator, context))
        log.info("relay %s (%s) connected, resuming from revision %d", hello.relay_id, caller.identity,
                 hello.known_revision)  # fmt: skip
        try:
            resumed = self.journal.since(hello.known_revision) if hello.known_revision else None
            if resumed is None:
                stream.need_list = True
            else:
                stream.pending = [ev for ev in resumed if stream.carries(ev.key)]
                yield self._events(stream)
            stale = self.source.stale
            stale = self.source.stale
            while not self.draining:
                if stream.need_list:
                    stream.need_list, stream.pending = False, []
                    for part in self._list(stream):
                        yield part
                        await asyncio.sleep(0)
                    yield self._progress(stream)
                if stream.pending:
                    yield self._events(stream)
                if stale != self.source.stale:
                    stale = self.source.stale
                    yield self._progress(stream)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.progress_interval):
                        await stream.wakeup.wait()
                        stream.wakeup.clear()
                        continue
                yield self._progress(stream)
            await abort(
                context, errors.Unavailable("server is shutting down; relay to another", code="draining")
            )
        finally:
            reader.cancel()
            self.journal.unlisten(stream.heard)
            self._open.discard(stream)
            self.relayed.gone(key)
            self.streams -= 1

    def drain(self) -> None:
        self.draining = True
        for stream in self._open:
            stream.wakeup.set()

    def _events(self, stream: MirrorStream) -> relay_pb2.MirrorResponse:
        """What is pending, and the revision up to which that is everything: pending events are
        added as the journal hears them, so whatever the journal holds is pending or sent."""
        events, stream.pending = stream.pending, []
        stream.upto = self.journal.revision
        return relay_pb2.MirrorResponse(
            events=relay_pb2.MirrorEvents(revision=stream.upto, events=map(_key, events))
        )

    def _progress(self, stream: MirrorStream) -> relay_pb2.MirrorResponse:
        if not stream.pending and not stream.need_list:
            stream.upto = self.journal.revision
        return relay_pb2.MirrorResponse(
            progress=relay_pb2.MirrorProgress(
                revision=stream.upto, stale=self.source.stale, stale_reason=self.source.stale_reason
            )
        )

    def _list(self, stream: MirrorStream) -> list[relay_pb2.MirrorResponse]:
        """A full list at the journal's revision, in parts of about 1 MiB, taken in one step (the
        journal and the store's layer versions move together on the event loop)."""
        carries = stream.carries
        revision = stream.upto = self.journal.revision
        kvs = [kv for kv in self.journal.keys.values() if carries(kv.key)]
        layers = [
            relay_pb2.LayerRevision(layer=layer.path, revision=rev)
            for layer, rev in self.store.layer_revisions().items()
            if carries(self.store.layout.marker_key(layer))
        ]
        parts, part, size = [], relay_pb2.MirrorList(revision=revision), 0
        for kv in kvs:
            if size > LIST_CHUNK_BYTES:
                parts.append(relay_pb2.MirrorResponse(list=part))
                part, size = relay_pb2.MirrorList(revision=revision), 0
            part.keys.append(_key(kv))
            size += len(kv.key) + len(kv.value)
        part.layer_revisions.extend(layers)
        part.last = True
        part.prefix = self.store.layout.prefix
        part.carried.extend(stream.carried)
        parts.append(relay_pb2.MirrorResponse(list=part))
        return parts

    async def _read(
        self,
        key: object,
        relay_id: str,
        caller: Caller,
        requests: AsyncIterator[relay_pb2.MirrorRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """The relay's fleet reports: only instances of scopes its identity may watch are kept."""
        enforcing, grant = self.access.enforcing, caller.grant

        def allowed(record: InstanceRecord) -> bool:
            return not enforcing or (grant is not None and grant.can_watch(record.scope))

        try:
            async for msg in requests:
                if msg.WhichOneof("kind") != "fleet":
                    log.warning("relay %s sent a second hello; ending its stream", relay_id)
                    context.cancel()  # type: ignore[attr-defined]
                    return
                try:
                    report = msg.fleet
                    records, relays = await asyncio.to_thread(RelayedFleet.decode, relay_id, report, allowed)
                    self.relayed.keep(key, records, relays)
                except ValueError as exc:
                    log.warning("ignoring a fleet report of relay %s: %s", relay_id, exc)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass


__all__ = ["MirrorService", "carried"]

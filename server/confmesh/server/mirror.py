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
import time
from collections import Counter
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
from confmesh.server.writer import off_loop
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
# A relay's fleet reports are taken in at most this often (relays send one a second); a relay that
# sends more than REPORT_BURST beyond that rate is ended with RESOURCE_EXHAUSTED.
REPORT_EVERY = 1.0
REPORT_BURST = 5
# Mirror streams one identity may hold at once.
MAX_STREAMS_PER_IDENTITY = 16


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
        # The relay's newest fleet report not yet taken in (one slot: newer ones replace it).
        self.report: relay_pb2.FleetReport | None = None
        self.reported = asyncio.Event()
        self.error: errors.ConfmeshError | None = None

    def fail(self, error: errors.ConfmeshError) -> None:
        self.error = error
        self.wakeup.set()

    def heard(self, what: str, events: list[Event]) -> None:
        """The journal moved: wake the stream only when it has something to send (others' busy
        scopes never hold back this relay's progress)."""
        if what == "list":
            self.need_list, self.pending = True, []
        elif not self.need_list:
            carried = [ev for ev in events if self.carries(ev.key)]
            if not carried:
                return
            self.pending += carried
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
        report_every: float = REPORT_EVERY,
    ) -> None:
        """`carried`: what this server itself carries (a relay: what its upstream sends it)."""
        self.carried = carried
        self.report_every = report_every
        self.store, self.journal, self.source, self.access = store, journal, source, access
        self.relayed = relayed
        self.progress_interval = progress_interval
        self.streams = 0
        self.draining = False
        self._ids = itertools.count(1)
        self._open: set[MirrorStream] = set()
        self._by_identity: Counter[str] = Counter()

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
        if self._by_identity[caller.identity] >= MAX_STREAMS_PER_IDENTITY:
            why = f"{caller.identity} holds {MAX_STREAMS_PER_IDENTITY} Mirror streams already"
            await abort(context, errors.ResourceExhausted(why, code="too_many_relays"))
            return
        self._by_identity[caller.identity] += 1
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
        reader = asyncio.create_task(self._read(stream, key, hello.relay_id, caller, request_iterator))
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
            next_progress = time.monotonic() + self.progress_interval
            while not self.draining:
                if stream.error is not None:
                    await abort(context, stream.error)
                    return
                if stream.need_list:
                    stream.need_list, stream.pending = False, []
                    async for part in self._list(stream):
                        yield part
                    yield self._progress(stream)
                if stream.pending:
                    yield self._events(stream)
                if stale != self.source.stale or time.monotonic() >= next_progress:
                    stale = self.source.stale
                    next_progress = time.monotonic() + self.progress_interval
                    yield self._progress(stream)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_progress - time.monotonic())):
                        await stream.wakeup.wait()
                stream.wakeup.clear()
            await abort(
                context, errors.Unavailable("server is shutting down; relay to another", code="draining")
            )
        finally:
            reader.cancel()
            self.journal.unlisten(stream.heard)
            self._open.discard(stream)
            self.relayed.gone(key)
            self.streams -= 1
            self._by_identity[caller.identity] -= 1
            if not self._by_identity[caller.identity]:
                del self._by_identity[caller.identity]

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

    async def _list(self, stream: MirrorStream) -> AsyncIterator[relay_pb2.MirrorResponse]:
        """A full list at the journal's revision, in parts of about 1 MiB. What it lists is taken in
        one step (the journal and the store's layer versions move together on the event loop); the
        parts are built one at a time, so a large key space never holds the loop for its size."""
        carries = stream.carries
        revision = stream.upto = self.journal.revision
        kvs = list(self.journal.keys.values())
        layers = list(self.store.layer_revisions().items())
        part, size = relay_pb2.MirrorList(revision=revision), 0
        for n, kv in enumerate(kvs):
            if not carries(kv.key):
                continue
            if size > LIST_CHUNK_BYTES:
                yield relay_pb2.MirrorResponse(list=part)
                part, size = relay_pb2.MirrorList(revision=revision), 0
            part.keys.append(_key(kv))
            size += len(kv.key) + len(kv.value)
            if n % 1000 == 999:
                await asyncio.sleep(0)
        marker = self.store.layout.marker_key
        part.layer_revisions.extend(
            relay_pb2.LayerRevision(layer=layer.path, revision=rev)
            for layer, rev in layers
            if carries(marker(layer))
        )
        part.last = True
        part.prefix = self.store.layout.prefix
        part.carried.extend(stream.carried)
        yield relay_pb2.MirrorResponse(list=part)

    async def _read(
        self,
        stream: MirrorStream,
        key: object,
        relay_id: str,
        caller: Caller,
        requests: AsyncIterator[relay_pb2.MirrorRequest],
    ) -> None:
        """The relay's fleet reports, into its one-slot mailbox: a relay that reports faster than
        `REPORT_EVERY` has its reports replaced, not queued, and decoded at most that often."""
        enforcing, grant = self.access.enforcing, caller.grant

        def allowed(record: InstanceRecord) -> bool:
            return not enforcing or (grant is not None and grant.can_watch(record.scope))

        digest = asyncio.create_task(self._digest(stream, key, relay_id, allowed))
        budget, refilled = float(REPORT_BURST), time.monotonic()
        try:
            async for msg in requests:
                if msg.WhichOneof("kind") != "fleet":
                    stream.fail(errors.InvalidArgument("a Mirror stream takes exactly one hello",
                                                       code="duplicate_hello"))  # fmt: skip
                    return
                now = time.monotonic()
                budget = min(REPORT_BURST, budget + (now - refilled) / self.report_every)
                refilled = now
                if budget < 1:
                    stream.fail(errors.ResourceExhausted(
                        f"a relay reports at most once every {self.report_every:g}s", code="too_many_reports"
                    ))  # fmt: skip
                    return
                budget -= 1
                stream.report = msg.fleet
                stream.reported.set()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            digest.cancel()

    async def _digest(
        self, stream: MirrorStream, key: object, relay_id: str, allowed: Callable[[InstanceRecord], bool]
    ) -> None:
        while True:
            await stream.reported.wait()
            stream.reported.clear()
            report, stream.report = stream.report, None
            if report is None:
                continue
            try:
                # On the low-priority write thread: one decode at a time, whoever reports.
                records, relays = await off_loop(lambda r=report: self.relayed.decode(relay_id, r, allowed))  # type: ignore[misc]
                self.relayed.keep(key, records, relays)
            except ValueError as exc:
                log.warning("ignoring a fleet report of relay %s: %s", relay_id, exc)
            await asyncio.sleep(self.report_every)


__all__ = ["MirrorService", "carried"]

"""ConfigService: the Watch stream and GetSnapshot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2
from opentelemetry.trace import SpanKind, TracerProvider

from confmesh import errors
from confmesh.delta import Update
from confmesh.digest import LEAFSUM, SCHEMES, pick_scheme
from confmesh.keys import Scope
from confmesh.rpc_errors import error_trailers, status_for
from confmesh.server.access import Access
from confmesh.server.interceptors import Malformed, checked_deserializer
from confmesh.server.known_names import ScopeCheck
from confmesh.server.limits import (
    MAX_ERROR_MESSAGE,
    MAX_FIELD_PATH,
    MAX_HASH_SCHEME_NAME,
    MAX_HASH_SCHEMES,
    MAX_USAGE_ENTRIES,
    MAX_USAGE_NAME,
    Throttled,
    clip,
)
from confmesh.server.resolver import Resolved, VersionHash
from confmesh.server.serving import ServingState
from confmesh.server.stream_callbacks import NoCallbacks, StreamCallbacks, StreamOpened
from confmesh.server.watch_stream import Subscriber
from confmesh.tracing import change_span
from confmesh.v1 import config_pb2, config_pb2_grpc
from confmesh.wire import to_struct, updates_to_pb

log = logging.getLogger(__name__)


class EncodedSnapshots:
    """WatchResponses serialized once per (snapshot, staleness, base) and shared by every stream sending them.

    Streams whose client runs a version the resolver can patch from (`base`)
    get a delta; the others get the whole snapshot.
    """

    def __init__(
        self,
        delta: Callable[[VersionHash, Resolved], list[Update] | None],
        limit: int = 4096,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.delta = delta
        self.limit = limit
        self.tracer_provider = tracer_provider
        self._cache: dict[tuple[int, bool, VersionHash | None, bool], tuple[Resolved, bytes]] = {}
        self._published: set[tuple[Scope, VersionHash, bool]] = set()

    def response(
        self, resolved: Resolved, *, stale: bool, base: VersionHash | None = None, legacy: bool = False
    ) -> bytes:
        """`legacy`: the whole snapshot with its leafsum256 hash (`base` is then ignored)."""
        if legacy:
            base = None
        key = (id(resolved), stale, base, legacy)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is resolved:  # the Resolved itself guards against id reuse
            return hit[1]
        if len(self._cache) >= self.limit:
            self._cache.clear()
            self._published.clear()
        updates = self.delta(base, resolved) if base is not None else None
        if updates is None:
            snapshot = snapshot_to_pb(resolved, stale=stale, legacy=legacy)
        else:
            snapshot = snapshot_to_pb(resolved, stale=stale, config=False)
            snapshot.delta.base_version, snapshot.delta.base_hash = base  # type: ignore[misc]
            snapshot.delta.updates.extend(updates_to_pb(updates))
        raw = config_pb2.WatchResponse(snapshot=snapshot).SerializeToString()
        self._cache[key] = (resolved, raw)
        published = (resolved.scope, resolved.key, stale)
        if resolved.trace_parent and published not in self._published:
            self._published.add(published)
            change_span(self.tracer_provider, resolved.trace_parent, "confmesh.publish", {
                "confmesh.environment": resolved.scope.environment,
                "confmesh.service": resolved.scope.service,
                "confmesh.version": resolved.version,
                "confmesh.stale": stale,
            }, kind=SpanKind.PRODUCER)  # fmt: skip
        return raw


def _overriding(callbacks: Sequence[StreamCallbacks], method: str) -> list[Callable[..., None]]:
    """The bound `method` of each callback that implements it (not NoCallbacks' no-op)."""
    base = getattr(NoCallbacks, method)
    return [getattr(cb, method) for cb in callbacks if getattr(type(cb), method, base) is not base]


def snapshot_to_pb(
    resolved: Resolved, *, stale: bool, config: bool = True, legacy: bool = False
) -> config_pb2.Snapshot:
    """The snapshot message; without `config`, its config and flags are left out (a delta carries them).

    `legacy`: with the leafsum256 hash instead of the current scheme's.
    """
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(resolved.resolved_at * 1e9))
    snapshot = config_pb2.Snapshot(
        environment=resolved.scope.environment,
        service=resolved.scope.service,
        version=resolved.version,
        hash=resolved.hash_for(legacy),
        stale=stale,
        resolved_at=ts,
        trace_parent=resolved.trace_parent,
    )
    if config:
        snapshot.config.CopyFrom(to_struct(resolved.config))
        snapshot.flags.CopyFrom(to_struct(resolved.flags))
    return snapshot


def _serialize_response(response: bytes | config_pb2.WatchResponse) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_config_service(service: ConfigService, server: grpc.aio.Server) -> None:
    """Register `service`; Watch may yield pre-serialized responses (EncodedSnapshots)."""
    name = config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name
    handlers = {
        "Watch": grpc.stream_stream_rpc_method_handler(
            service.Watch,
            request_deserializer=checked_deserializer(config_pb2.WatchRequest.FromString, f"/{name}/Watch"),
            response_serializer=_serialize_response,
        ),
        "GetSnapshot": grpc.unary_unary_rpc_method_handler(
            service.GetSnapshot,
            request_deserializer=checked_deserializer(
                config_pb2.GetSnapshotRequest.FromString, f"/{name}/GetSnapshot"
            ),
            response_serializer=config_pb2.Snapshot.SerializeToString,
        ),
        "DescribeScope": grpc.unary_unary_rpc_method_handler(
            service.DescribeScope,
            request_deserializer=checked_deserializer(
                config_pb2.DescribeScopeRequest.FromString, f"/{name}/DescribeScope"
            ),
            response_serializer=config_pb2.ScopeNotice.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: errors.ConfmeshError) -> None:
    """End the call with `exc`; its text is cut to fit gRPC's metadata limit (16 KiB in all)."""
    if len(exc.message) > MAX_ERROR_MESSAGE or len(exc.field) > MAX_FIELD_PATH:
        exc = type(exc)(
            clip(exc.message, MAX_ERROR_MESSAGE), code=exc.code, field=clip(exc.field, MAX_FIELD_PATH)
        )
    context.set_trailing_metadata(error_trailers(exc))
    await context.abort(status_for(exc), exc.message)


def _legacy_scheme(offered: Sequence[str]) -> bool:
    """Whether a peer that offers these hash schemes gets leafsum256 (True) or jcs-leafsum256."""
    if len(offered) > MAX_HASH_SCHEMES or any(len(s) > MAX_HASH_SCHEME_NAME for s in offered):
        raise errors.InvalidArgument(
            f"hash_schemes takes at most {MAX_HASH_SCHEMES} names of up to {MAX_HASH_SCHEME_NAME} characters",
            field="hash_schemes",
        )
    scheme = pick_scheme(offered)
    if scheme is None:
        raise errors.InvalidArgument(
            f"no hash scheme in common: the server computes {', '.join(SCHEMES)}",
            code="unknown_hash_scheme",
            field="hash_schemes",
        )
    return scheme == LEAFSUM


class Snapshots(Protocol):
    """Where a stream's snapshots come from (``plane.SnapshotPlane`` is one): subscribing offers
    the current snapshot at once and every later one; ``current`` and ``delta`` answer a stream's
    questions (a report of the version it runs, a delta from it)."""

    def subscribe(self, sub: Subscriber) -> None: ...
    def unsubscribe(self, sub: Subscriber) -> None: ...
    def current(self, scope: Scope, instance_id: str | None = None) -> Resolved: ...
    def delta(self, base: VersionHash, target: Resolved) -> list[Update] | None: ...


class ConfigService(config_pb2_grpc.ConfigServiceServicer):
    """The Watch stream and GetSnapshot, on three seams: where snapshots come from
    (``Snapshots``), how fresh the source is (``ServingState``), and who hears about streams
    (``StreamCallbacks``: the ledger, metrics and flag usage). It owns its streams' state."""

    def __init__(
        self,
        snapshots: Snapshots,
        source: ServingState,
        callbacks: Sequence[StreamCallbacks] = (),
        *,
        heartbeat_interval: float = 15.0,
        subscribe_timeout: float = 30.0,
        catch_up_timeout: float = 10.0,
        tracer_provider: TracerProvider | None = None,
        access: Access | None = None,
        names: Callable[[str, str], ScopeCheck] | None = None,
        carries: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.access = access or Access(dict)
        self.names = names
        # A relay serves only the scopes it carries (None: every scope, as a server does).
        self.carries = carries
        self.snapshots = snapshots
        self.streams: set[Subscriber] = set()
        self.source = source
        self.callbacks = tuple(callbacks)
        # Per push and per ACK, only the callbacks that do something are called.
        self._on_sent = _overriding(self.callbacks, "sent")
        self._on_acked = _overriding(self.callbacks, "acked")
        self.heartbeat_interval = heartbeat_interval
        self.subscribe_timeout = subscribe_timeout
        self.catch_up_timeout = catch_up_timeout
        self.draining = False
        self._ticker: asyncio.Task[None] | None = None
        self.encoded = EncodedSnapshots(snapshots.delta, tracer_provider=tracer_provider)
        self.throttled = Throttled(log)  # repeated per-stream log lines

    async def _ready(self, known_version: int = 0) -> None:
        """Wait until the cache is synced and at least at `known_version`.

        A replica that lags behind a resuming client catches up before
        answering it, so the client is never offered an older version.
        """
        if not await self.source.wait_for_revision(known_version, self.catch_up_timeout):
            if not self.source.synced:
                raise errors.Unavailable(f"server has not synced with etcd yet: {self.source.stale_reason}")
            if not self.source.stale:
                raise errors.Unavailable(
                    f"server is behind the client's version {known_version} "
                    f"(at {self.source.revision}); try another replica"
                )

    async def _watchable(
        self,
        request: config_pb2.GetSnapshotRequest | config_pb2.DescribeScopeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        what: str,
    ) -> Scope:
        """The scope a unary call names, once the caller may watch it and the cache is synced; otherwise
        the call ends with the error (audited when it is a denial)."""
        try:
            if isinstance(request, Malformed):
                raise errors.InvalidArgument(request.message, code="malformed")
            scope = Scope.checked(request.environment, request.service)
            caller = self.access.identify(context)
            self.access.require(caller, lambda g: g.can_watch(scope), f"{what} {scope}")
            self._check_carried(scope)
            await self._ready()
        except errors.ConfmeshError as exc:
            await self.access.audit_denial(exc, context, method)
            await abort(context, exc)
            raise
        return scope

    def _check_carried(self, scope: Scope) -> None:
        if self.carries is not None and not self.carries(scope):
            raise errors.NotFound(f"this relay does not carry {scope}; connect to one that does, or to the "
                                  "servers", code="not_carried")  # fmt: skip

    async def GetSnapshot(
        self, request: config_pb2.GetSnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.Snapshot:
        try:
            legacy = _legacy_scheme([] if isinstance(request, Malformed) else request.hash_schemes)
        except errors.ConfmeshError as exc:
            await abort(context, exc)
            raise
        scope = await self._watchable(request, context, "GetSnapshot", "read the snapshot of")
        return snapshot_to_pb(self.snapshots.current(scope), stale=self.source.stale, legacy=legacy)

    async def DescribeScope(
        self, request: config_pb2.DescribeScopeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> config_pb2.ScopeNotice:
        scope = await self._watchable(request, context, "DescribeScope", "describe")
        if self.names is None:
            return config_pb2.ScopeNotice(environment_known=True, service_known=True)
        return self.names(scope.environment, scope.service).to_pb()

    async def Watch(
        self,
        request_iterator: AsyncIterator[config_pb2.WatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[config_pb2.WatchResponse | bytes]:
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                first = await anext(aiter(request_iterator), None)
            if isinstance(first, Malformed):
                raise errors.InvalidArgument(first.message, code="malformed")
            if first is None or first.WhichOneof("kind") != "subscribe":
                raise errors.InvalidArgument(
                    "the first message on a Watch stream must be a subscribe", code="no_subscribe"
                )
            sub_msg = first.subscribe
            scope = Scope.checked(sub_msg.environment, sub_msg.service)
            if not sub_msg.instance_id or len(sub_msg.instance_id) > 253:
                raise errors.InvalidArgument(
                    "subscribe.instance_id must be 1-253 characters", field="instance_id"
                )
            if sub_msg.known_version < 0:
                raise errors.InvalidArgument("subscribe.known_version must be >= 0", field="known_version")
            legacy = _legacy_scheme(sub_msg.hash_schemes)
            caller = self.access.identify(context)
            self.access.require(caller, lambda g: g.can_watch(scope), f"watch {scope}")
            self._check_carried(scope)
            await self._ready(sub_msg.known_version)
        except TimeoutError:
            await abort(context, errors.InvalidArgument("no subscribe received in time", code="no_subscribe"))
            return
        except errors.ConfmeshError as exc:
            await self.access.audit_denial(exc, context, "Watch")
            await abort(context, exc)
            return

        if self.draining:
            await abort(
                context, errors.Unavailable("server is shutting down; use another replica", code="draining")
            )
            return
        sub = Subscriber(scope, sub_msg.known_version, sub_msg.known_hash, sub_msg.instance_id,
                         legacy=legacy, caller=caller)  # fmt: skip
        sub.accept_delta = sub_msg.accept_delta
        stream = StreamOpened(
            sub.id, scope, sub_msg.instance_id, context.peer(), dict(sub_msg.labels),
            sub_msg.known_version, sub_msg.known_hash, sub.created,
        )  # fmt: skip
        callbacks = self.callbacks
        for cb in callbacks:
            cb.opened(stream)
        self.streams.add(sub)
        reader = asyncio.create_task(self._read(sub, stream, request_iterator))
        try:
            self.snapshots.subscribe(sub)
            if sub.pending is None:
                sub.ping()  # already current: say so at once
            if self._ticker is None:
                self._ticker = asyncio.create_task(self._heartbeats(), name="watch-heartbeats")
            while True:
                await sub.wakeup.wait()  # a push, a heartbeat tick (see _heartbeats) or the end
                sub.wakeup.clear()
                if sub.ended:
                    if sub.error is not None:
                        await abort(context, sub.error)
                    return
                if sub.heartbeat_now:
                    sub.heartbeat_now = False
                    yield config_pb2.WatchResponse(
                        heartbeat=config_pb2.Heartbeat(
                            server_revision=self.source.revision, stale=self.source.stale
                        )
                    )
                snapshot = sub.take()
                if snapshot is not None:
                    for sent in self._on_sent:
                        sent(stream, snapshot.version, snapshot.resolved_at)
                    base, sub.base = sub.delta_base(), (snapshot.version, snapshot.hash)
                    yield self.encoded.response(
                        snapshot, stale=self.source.stale, base=base, legacy=sub.legacy
                    )
        finally:
            reader.cancel()
            self.snapshots.unsubscribe(sub)
            self.streams.discard(sub)
            for cb in callbacks:
                cb.closed(stream)

    async def _heartbeats(self) -> None:
        """One ticker for every stream: cheaper than a timer per stream per wait at 10,000 streams."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for sub in list(self.streams):
                sub.ping()

    def recheck_access(self) -> None:
        """After a policy reload or a token change: end the streams their callers may no longer watch."""
        if not self.access.enforcing:
            return
        for sub in list(self.streams):
            if sub.caller is None:
                continue
            caller = self.access.still_valid(sub.caller)
            if caller is None or caller.grant is None or not caller.grant.can_watch(sub.scope):
                log.warning("ending the watch of %s by %s: access withdrawn", sub.scope, sub.caller.identity)
                sub.fail(errors.PermissionDenied(f"{sub.caller.identity} may no longer watch {sub.scope}",
                                                 code="denied"))  # fmt: skip
            else:
                sub.caller = caller

    def drain(self) -> None:
        """End every stream with UNAVAILABLE/draining, so clients move to another replica now."""
        self.draining = True
        if self._ticker is not None:
            self._ticker.cancel()
        for sub in list(self.streams):
            sub.fail(
                errors.Unavailable("server is shutting down; reconnect to another replica", code="draining")
            )

    async def _read(
        self, sub: Subscriber, stream: StreamOpened, requests: AsyncIterator[config_pb2.WatchRequest]
    ) -> None:
        try:
            async for msg in requests:
                if isinstance(msg, Malformed):
                    sub.fail(errors.InvalidArgument(msg.message, code="malformed"))
                    return
                kind = msg.WhichOneof("kind")
                if kind == "ack":
                    if sub.sent.get(msg.ack.version) != msg.ack.hash:
                        sub.fail(errors.InvalidArgument(
                            f"ACK for version {msg.ack.version} ({msg.ack.hash!r}), "
                            "which was never sent on this stream", code="unknown_version",
                        ))  # fmt: skip
                        return
                    for acked in self._on_acked:
                        acked(stream, msg.ack.version, msg.ack.hash)
                elif kind == "nack":
                    nack = msg.nack
                    if sub.sent.get(nack.version) != nack.hash:
                        sub.fail(errors.InvalidArgument(
                            f"NACK for version {nack.version} ({nack.hash!r}), "
                            "which was never sent on this stream", code="unknown_version",
                        ))  # fmt: skip
                        return
                    sub.nacked.add(nack.version)
                    sub.base = None
                    paths = [fe.path for fe in nack.field_errors]
                    for cb in self.callbacks:
                        cb.nacked(stream, nack.version, nack.hash, nack.error, paths)
                    self.throttled.log(
                        logging.WARNING,
                        ("nack", sub.scope),
                        "instance %s of %s rejected version %d: %s",
                        clip(sub.instance_id, 64),
                        sub.scope,
                        nack.version,
                        clip(nack.error, 200),
                    )
                elif kind == "usage":
                    counts = msg.usage.counts
                    if len(counts) > MAX_USAGE_ENTRIES or any(
                        c.count < 0 or len(c.flag) > MAX_USAGE_NAME or len(c.variant) > MAX_USAGE_NAME
                        for c in counts
                    ):
                        sub.fail(errors.InvalidArgument(
                            f"usage reports take at most {MAX_USAGE_ENTRIES} "
                            f"non-negative counts with names up to {MAX_USAGE_NAME} characters",
                            code="bad_usage",
                        ))  # fmt: skip
                        return
                    entries = [(c.flag, c.variant, c.count) for c in counts]
                    for cb in self.callbacks:
                        cb.usage(stream, entries)
                elif kind == "report":
                    for cb in self.callbacks:
                        cb.reported(stream)
                    current = self.snapshots.current(sub.scope, sub.instance_id)
                    if msg.report.need_full:
                        sub.base = None
                    if sub.resend_if_behind(current, msg.report.version, msg.report.hash):
                        self.throttled.log(logging.INFO, ("behind", sub.scope),
                                      "instance of %s reports version %d; re-sending %d",
                                      sub.scope, msg.report.version, current.version)  # fmt: skip
                elif kind == "subscribe":
                    sub.fail(errors.InvalidArgument("a Watch stream takes exactly one subscribe",
                                                    code="duplicate_subscribe"))  # fmt: skip
                    return
                else:
                    sub.fail(errors.InvalidArgument("empty WatchRequest", code="empty_message"))
                    return
            sub.close()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass

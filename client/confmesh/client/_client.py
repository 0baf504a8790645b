"""The asynchronous config client: Watch, validate, apply or reject, ACK/NACK."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from opentelemetry.trace import TracerProvider
from pydantic import BaseModel

from confmesh import errors
from confmesh.client import _cache
from confmesh.client._apply import AppliedSnapshot, Confirm, NeedFull, Reject, accept, examine
from confmesh.client._validation import validate
from confmesh.digest import JCS, SCHEMES, scheme_of, snapshot_digest
from confmesh.flags import FlagEvaluator, UsageCounter
from confmesh.keys import Scope
from confmesh.merge import lookup
from confmesh.rpc_errors import error_from_rpc
from confmesh.secrets import resolve_changed, resolve_refs
from confmesh.tls import TLSConfig, aio_channel, bearer_metadata
from confmesh.tracing import change_span
from confmesh.v1 import config_pb2, config_pb2_grpc

log = logging.getLogger("confmesh.client")

T = TypeVar("T")
ChangeCallback = Callable[[Any, Any], Awaitable[None] | None]

MAX_USAGE_ENTRIES = 1000

# Errors a retry cannot fix: the client stops and reports them.
FATAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True)
class Rejection:
    version: int
    hash: str
    error: str
    issues: list[errors.FieldIssue]
    at: float


class ClientState(enum.Enum):
    """CONNECTING (no config yet), READY, STALE (disconnected, server stale, or cached), ERROR."""

    CONNECTING = "connecting"
    READY = "ready"
    STALE = "stale"
    ERROR = "error"


def default_instance_id() -> str:
    """``$CONFMESH_INSTANCE_ID`` (e.g. the pod name), else ``HOST-PID-RANDOM``."""
    named = os.environ.get("CONFMESH_INSTANCE_ID")
    return named or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ConfigClient(Generic[T]):
    """Typed, validated, live configuration for one (environment, service).

    ::

        async with ConfigClient("127.0.0.1:7070", environment="prod",
                                service="orders", schema=Settings) as client:
            client.config.database.pool_max   # a validated Settings instance
            client.version                     # the version it runs

    Every snapshot is validated against `schema` before it is applied; an
    invalid one is rejected (NACK) and the last good config stays.
    """

    def __init__(
        self,
        target: str,
        *,
        environment: str,
        service: str,
        schema: type[T] | None = None,
        instance_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        start_from_defaults: bool = False,
        startup_timeout: float = 10.0,
        history_size: int = 16,
        usage_interval: float = 10.0,
        report_interval: float = 30.0,
        cache_path: str | os.PathLike[str] | None = None,
        max_cache_age: float | None = 7 * 24 * 3600,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        channel_options: list[tuple[str, Any]] | None = None,
        tls: TLSConfig | None = None,
        tracer_provider: TracerProvider | None = None,
        token: str | None = None,
    ) -> None:
        self.target = target
        self._metadata = bearer_metadata(token)
        self.tls = tls
        self.tracer_provider = tracer_provider
        self._traced_version = 0
        self.scope = Scope.checked(environment, service)
        if schema is not None and not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError("schema must be a pydantic BaseModel subclass")
        self.schema = schema
        self.instance_id = instance_id or default_instance_id()
        self.labels = dict(labels or {})
        self.start_from_defaults = start_from_defaults
        self.startup_timeout = startup_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.history: deque[AppliedSnapshot] = deque(maxlen=history_size)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.max_cache_age = max_cache_age
        # True while the config in use came from the cache file and no server has confirmed it.
        self.cached = False
        self.usage = UsageCounter()
        self.usage_interval = usage_interval
        self.report_interval = report_interval
        self.last_rejection: Rejection | None = None
        self.server_stale = False
        self.connected = False
        self.reconnects = 0
        # Why the last connection attempt ended ("" while connected): for "not connected yet" messages.
        self.last_error = ""
        # Snapshots applied from a delta (the others came whole).
        self.deltas_applied = 0
        # What the server said of this scope's names once connected ("" when it knows them; None
        # until asked): a typo in the environment or service is logged as a warning, not silent.
        self.scope_notice: str | None = None
        self._describing: asyncio.Task[None] | None = None
        self._described = asyncio.Event()
        self._current: AppliedSnapshot | None = None
        # True once a server delivered a snapshot (cached and default configs do not count).
        self._from_server = False
        self._no_flags = FlagEvaluator(environment=environment, usage=self.usage)
        self._callbacks: list[ChangeCallback] = []
        self._state_callbacks: list[Callable[[ClientState], None]] = []
        self._state = ClientState.CONNECTING
        self._applied = asyncio.Condition()
        self._fatal: errors.ConfmeshError | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel_options = channel_options or [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        self._channel: grpc.aio.Channel | None = None

    # -- public surface -------------------------------------------------------

    @property
    def config(self) -> T:
        """The current typed config (a `schema` instance; a dict without schema)."""
        if self._current is None:
            raise errors.StartupError("no configuration yet: use `async with` or `await start()` first")
        config: T = self._current.config
        return config

    @property
    def version(self) -> int:
        """The version this instance runs (0: none / schema defaults)."""
        return self._current.version if self._current else 0

    @property
    def flags(self) -> FlagEvaluator:
        """The environment's flags, evaluated locally (an empty set before the first snapshot)."""
        return self._current.flags if self._current else self._no_flags

    @property
    def hash(self) -> str:
        return self._current.hash if self._current else ""

    @property
    def raw(self) -> Mapping[str, Any]:
        """The config as distributed (secret references not resolved: safe to log)."""
        return self._current.raw if self._current else {}

    def get(self, key: str, default: Any = None) -> Any:
        """A dotted-key lookup in the raw config (`"database.pool.max"`)."""
        found, value = lookup(self.raw, key)
        return value if found else default

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(old, new)` after each applied change; returns an unsubscribe function.

        Plain functions run on the client's event loop and must be quick;
        coroutine functions are scheduled as tasks. Exceptions are logged.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    @property
    def state(self) -> ClientState:
        return self._state

    def on_state(self, callback: Callable[[ClientState], None]) -> Callable[[], None]:
        """Call `callback(state)` whenever the client's ClientState changes; returns an unsubscribe."""
        self._state_callbacks.append(callback)
        return lambda: self._state_callbacks.remove(callback) if callback in self._state_callbacks else None

    def _update_state(self) -> None:
        if self._fatal is not None:
            state = ClientState.ERROR
        elif self._current is None:
            state = ClientState.CONNECTING
        elif not self.connected or self.server_stale or self.cached:
            state = ClientState.STALE
        else:
            state = ClientState.READY
        if state is self._state:
            return
        self._state = state
        for callback in list(self._state_callbacks):
            try:
                callback(state)
            except Exception:
                log.exception("confmesh state callback %r failed", callback)

    async def start(self) -> None:
        """Connect and wait for the first valid snapshot.

        With `cache_path`, a server that does not answer within
        `startup_timeout` is not fatal: the client starts from the cached
        last-good snapshot (``client.cached`` is True) unless it is older than
        `max_cache_age`, and keeps trying the server in the background.
        """
        if self._task is not None:
            raise errors.ConfmeshError("client already started")
        if self.start_from_defaults:
            self._apply_defaults()
        self._channel = aio_channel(self.target, self.tls, self._channel_options)
        self._task = asyncio.create_task(self._run(), name=f"confmesh-watch-{self.scope}")
        if self._current is None:
            try:
                await self._wait_first_snapshot()
            except errors.StartupError as exc:
                if self.cache_path is None or not await self._start_from_cache(exc):
                    await self.close()
                    raise
            except BaseException:
                await self.close()
                raise

    async def _start_from_cache(self, cause: errors.StartupError) -> bool:
        assert self.cache_path is not None
        cached = await asyncio.to_thread(_cache.load, self.cache_path, self.scope, self.max_cache_age)
        if cached is None:
            return False
        try:
            resolved, issues = await asyncio.to_thread(resolve_refs, cached.config)
            if issues:
                raise errors.SnapshotRejected("; ".join(str(i) for i in issues), issues)
            config = validate(self.schema, resolved)  # type: ignore[arg-type]
            flags = FlagEvaluator(
                cached.flags, version=cached.version, environment=self.scope.environment, usage=self.usage
            )
        except (errors.SnapshotRejected, errors.InvalidArgument) as exc:
            log.warning("config cache %s no longer fits the schema: %s", self.cache_path, exc.message)
            return False
        digest = snapshot_digest(cached.config, cached.flags, scheme_of(cached.hash) or JCS)
        self._current = AppliedSnapshot(
            cached.version,
            cached.hash,
            cached.config,
            config,
            flags,
            time.time(),
            cached.flags,
            digest,
            resolved,
        )
        self.cached = True
        log.warning(
            "starting %s from cached version %d (saved %.0fs ago): %s",
            self.scope,
            cached.version,
            time.time() - cached.saved_at,
            cause.message,
        )
        return True

    async def close(self) -> None:
        for task in (self._task, self._describing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        self.connected = False

    async def __aenter__(self) -> ConfigClient[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _wait_first_snapshot(self) -> None:
        """Wait for the first snapshot from a server (an empty scope is version 0)."""
        await self._wait_until(lambda: self._from_server, self.startup_timeout)

    async def wait_for_version(self, version: int, timeout: float | None = None) -> None:
        """Wait until this client runs `version` or newer."""
        await self._wait_until(lambda: self._from_server and self.version >= version, timeout)

    async def _wait_until(self, done: Callable[[], bool], timeout: float | None) -> None:
        def reached() -> bool:
            return self._fatal is not None or done()

        try:
            async with asyncio.timeout(timeout), self._applied:
                await self._applied.wait_for(reached)
        except TimeoutError:
            why = ""
            if self.last_rejection is not None:
                why = f"; last snapshot rejected: {self.last_rejection.error}"
            elif not self.connected:
                why = f"; server {self.target} not reachable"
            raise errors.StartupError(
                f"no valid configuration for {self.scope} within {timeout}s{why}"
            ) from None
        if self._fatal is not None and not done():
            raise self._fatal

    # -- internals ------------------------------------------------------------

    def _apply_defaults(self) -> None:
        try:
            config = validate(self.schema, {})  # type: ignore[arg-type]
        except errors.SnapshotRejected as exc:
            raise errors.StartupError(
                f"start_from_defaults: the schema has fields without defaults: {exc.message}"
            ) from exc
        self._current = AppliedSnapshot(0, "", {}, config, self._no_flags, time.time())

    async def _run(self) -> None:
        assert self._channel is not None
        stub = config_pb2_grpc.ConfigServiceStub(self._channel)
        backoff = self.backoff_initial
        while True:
            outbox: asyncio.Queue[config_pb2.WatchRequest] = asyncio.Queue()
            subscribe = config_pb2.WatchRequest(
                subscribe=config_pb2.Subscribe(
                    environment=self.scope.environment,
                    service=self.scope.service,
                    known_version=self.version,
                    known_hash=self.hash,
                    instance_id=self.instance_id,
                    labels=self.labels,
                    accept_delta=True,
                    hash_schemes=SCHEMES,
                )
            )

            async def requests(
                first: config_pb2.WatchRequest = subscribe,
                box: asyncio.Queue[config_pb2.WatchRequest] = outbox,
            ) -> Any:
                yield first
                while True:
                    yield await box.get()

            call = stub.Watch(requests(), metadata=self._metadata)
            reporter = asyncio.create_task(self._report(outbox))
            draining = False
            try:
                async for resp in call:
                    self.connected = True
                    self.last_error = ""
                    backoff = self.backoff_initial
                    if self._describing is None:
                        self._describing = asyncio.create_task(self._describe(stub))
                    if resp.WhichOneof("kind") == "heartbeat":
                        # Nothing newer was sent first, so what we run is current.
                        self.server_stale = resp.heartbeat.stale
                        if self._current is not None and self.version > 0:
                            self.cached = False
                            await self._confirmed()
                        self._update_state()
                        continue
                    answer = await self._receive(resp.snapshot)
                    self._trace_answer(resp.snapshot, answer)
                    outbox.put_nowait(answer)
                    self._update_state()
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc(exc, self.target)
                if exc.code() in FATAL_CODES or error.code == "not_carried":  # a relay without the scope
                    log.error("confmesh watch for %s failed: %s", self.scope, error.message)
                    self._fatal = error
                    async with self._applied:
                        self._applied.notify_all()
                    self._update_state()
                    return
                draining = error.code == "draining"
                self.last_error = error.message
                log.info("confmesh watch for %s interrupted: %s", self.scope, error.message)
            finally:
                reporter.cancel()
                call.cancel()
                self.connected = False
                self._update_state()
            self.reconnects += 1
            if draining:  # a replica shutting down on purpose: move on at once (small jitter)
                await asyncio.sleep(random.uniform(0, 0.05))
                continue
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.backoff_max)

    async def _describe(self, stub: config_pb2_grpc.ConfigServiceStub) -> None:
        """Ask once whether the server knows this scope's names; warn when it does not."""
        request = config_pb2.DescribeScopeRequest(
            environment=self.scope.environment, service=self.scope.service
        )
        try:
            notice = await stub.DescribeScope(request, metadata=self._metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:  # an older server, or no answer: nothing to say
            log.debug("DescribeScope for %s: %s", self.scope, exc.code())
            return
        finally:
            self._described.set()
        self.scope_notice = notice.message
        if notice.message:
            log.warning("confmesh %s: %s", self.scope, notice.message)

    async def describe_scope(self) -> str | None:
        """Once connected: what the server said of this scope's names ("" when it knows them, None when
        it could not say), e.g. "unknown environment 'prdo' …; did you mean 'prod'?"."""
        await self._described.wait()
        return self.scope_notice

    async def _report(self, outbox: asyncio.Queue[config_pb2.WatchRequest]) -> None:
        """Periodic messages: what this instance runs, and flag usage counts."""
        loop = asyncio.get_running_loop()
        next_report = loop.time() + self.report_interval * random.uniform(0.5, 1.0)
        next_usage = loop.time() + self.usage_interval
        while True:
            await asyncio.sleep(max(0.0, min(next_report, next_usage) - loop.time()))
            now = loop.time()
            if now >= next_report:
                next_report = now + self.report_interval
                if self.version > 0:
                    outbox.put_nowait(
                        config_pb2.WatchRequest(
                            report=config_pb2.Report(version=self.version, hash=self.hash)
                        )
                    )
            if now >= next_usage:
                next_usage = now + self.usage_interval
                self._send_usage(outbox, self.usage_interval)

    def _send_usage(self, outbox: asyncio.Queue[config_pb2.WatchRequest], window: float) -> None:
        """Flag evaluation counts since the last report (at most MAX_USAGE_ENTRIES)."""
        counts = self.usage.take()
        if not counts:
            return
        items = sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_USAGE_ENTRIES]
        report = config_pb2.FlagUsage(
            counts=[config_pb2.FlagUsageCount(flag=f, variant=v, count=n) for (f, v), n in items]
        )
        now = time.time()
        report.window_start.FromNanoseconds(int((now - window) * 1e9))
        report.window_end.FromNanoseconds(int(now * 1e9))
        outbox.put_nowait(config_pb2.WatchRequest(usage=report))

    def _nack(
        self, snap: config_pb2.Snapshot, error: str, issues: list[errors.FieldIssue]
    ) -> config_pb2.WatchRequest:
        self.last_rejection = Rejection(snap.version, snap.hash, error, issues, time.time())
        log.warning("rejected %s version %d: %s", self.scope, snap.version, error)
        return config_pb2.WatchRequest(
            nack=config_pb2.Nack(
                version=snap.version,
                hash=snap.hash,
                running_version=self.version,
                error=error,
                field_errors=[config_pb2.FieldError(path=i.path, message=i.message) for i in issues],
            )
        )

    def _ack(self) -> config_pb2.WatchRequest:
        return config_pb2.WatchRequest(ack=config_pb2.Ack(version=self.version, hash=self.hash))

    async def _receive(self, snap: config_pb2.Snapshot) -> config_pb2.WatchRequest:
        self.server_stale = snap.stale
        current = self._current
        seen = examine(current, snap)
        if isinstance(seen, Confirm):
            self.cached = False
            await self._confirmed()
            return self._ack()
        if isinstance(seen, Reject):
            return self._nack(snap, seen.message, seen.issues)
        if isinstance(seen, NeedFull):
            log.info("%s: %s; asking for all of it", self.scope, seen.reason)
            return self._need_full()
        # Secret references read files and Vault (up to its 10 s timeout): never on the event loop.
        previous = current.resolved if current is not None else None
        resolved, secret_issues = await asyncio.to_thread(resolve_changed, seen.raw, previous, seen.changed)
        verdict = accept(
            seen, resolved, secret_issues, schema=self.schema, current=current, version=snap.version,
            environment=self.scope.environment, usage=self.usage,
        )  # fmt: skip
        if isinstance(verdict, Reject):
            return self._nack(snap, verdict.message, verdict.issues)
        raw, raw_flags, config = seen.raw, seen.raw_flags, verdict.config
        applied = AppliedSnapshot(
            snap.version, snap.hash, raw, config, verdict.flags, time.time(), raw_flags, seen.digest, resolved
        )
        self.deltas_applied += snap.HasField("delta")
        self._current = applied
        self._from_server = True
        self.cached = False
        self.history.append(applied)
        if self.cache_path is not None:
            try:
                cached = _cache.CachedSnapshot(snap.version, snap.hash, raw, raw_flags, applied.applied_at)
                await asyncio.to_thread(_cache.save, self.cache_path, self.scope, cached)
            except OSError as exc:
                log.warning("could not write config cache %s: %s", self.cache_path, exc)
        async with self._applied:
            self._applied.notify_all()
        old = current.config if current is not None else None
        if current is None or current.hash != applied.hash:
            self._fire(old, config)
        return self._ack()

    def _need_full(self) -> config_pb2.WatchRequest:
        return config_pb2.WatchRequest(
            report=config_pb2.Report(version=self.version, hash=self.hash, need_full=True)
        )

    def _trace_answer(self, snap: config_pb2.Snapshot, answer: config_pb2.WatchRequest) -> None:
        """Join the change's trace with one apply or reject span per version received."""
        if not snap.trace_parent or snap.version == self._traced_version or answer.HasField("report"):
            return
        self._traced_version = snap.version
        attributes = {
            "confmesh.environment": self.scope.environment,
            "confmesh.service": self.scope.service,
            "confmesh.instance_id": self.instance_id,
            "confmesh.version": snap.version,
        }
        if answer.HasField("nack"):
            change_span(self.tracer_provider, snap.trace_parent, "confmesh.reject", attributes,
                        error=answer.nack.error)  # fmt: skip
        else:
            change_span(self.tracer_provider, snap.trace_parent, "confmesh.apply", attributes)

    async def _confirmed(self) -> None:
        """A server confirmed that what we run (e.g. from the cache) is current."""
        if not self._from_server:
            self._from_server = True
            async with self._applied:
                self._applied.notify_all()

    def _fire(self, old: Any, new: Any) -> None:
        for callback in list(self._callbacks):
            try:
                result = callback(old, new)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_callback_error)
            except Exception:
                log.exception("confmesh change callback %r failed", callback)


def _log_callback_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("confmesh change callback failed", exc_info=task.exception())

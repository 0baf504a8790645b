"""gRPC interceptors that carry flag decisions and trace context between services.

Server side (``grpc.aio`` and sync): extract trace context and baggage from
the call's metadata, start a SERVER span (``span=False`` leaves that to other
instrumentation), and run the handler inside a request scope holding the
caller's decisions if ``trust`` allows the caller. Client side (a channel
wrapper for ``grpc.aio``, an interceptor for sync channels): inject the
current trace context and the request's decisions.

    server = grpc.aio.server(interceptors=[FlagServerInterceptor(Trust(["orders.internal"]))])
    channel = FlagChannel(grpc.aio.insecure_channel(target))

Use these in place of ``opentelemetry-instrumentation-grpc``, not with it:
both would inject and extract the same headers.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from confmesh.client.propagation import EMPTY, Trust, with_decisions
from confmesh.flags import decisions as codec
from confmesh.flags.scope import FlagScope, close_scope, current_scope

Behavior = Callable[..., Any]
# Global providers that record nothing: no span is started while one of these is installed.
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


class _SdkProbe:
    """Is a recording tracer provider installed globally? Looked up at most once a second: the
    lookup reads the environment, and a global provider, once set, stays."""

    installed = False
    checked_at = -1.0

    def __call__(self) -> bool:
        if not self.installed:
            now = time.monotonic()
            if now - self.checked_at >= 1.0:
                self.checked_at = now
                self.installed = not isinstance(trace.get_tracer_provider(), _NO_SDK)
        return self.installed


_sdk_installed = _SdkProbe()


# What `_ServerSide.open` returns: tokens to reset (trace context, request scope), and the baggage
# header whose decisions wait for the caller's identity to be checked ("" when none do).
_Opened = tuple["contextvars.Token[Context] | None", "contextvars.Token[FlagScope | None]", str]

# Left by the aio interceptor for its handler wrapper: decisions that wait for the caller's identity.
_awaiting_trust: contextvars.ContextVar[str] = contextvars.ContextVar("confmesh_awaiting_trust", default="")


def _outgoing_metadata(metadata: Any, carrier: dict[str, str]) -> list[tuple[str, str | bytes]]:
    """The call's own metadata, with `carrier`'s headers in place of any of the same name."""
    kept = [(k, v) for k, v in (metadata or ()) if k not in carrier]
    return kept + list(carrier.items())


def _carrier() -> dict[str, str]:
    """Trace context and baggage, the request's flag decisions included, as headers."""
    carrier: dict[str, str] = {}
    if otel_context.get_current():  # an empty context has nothing for any propagator to inject
        propagate.inject(carrier)
    merged = with_decisions(carrier.get("baggage", ""))
    if merged:
        carrier["baggage"] = merged
    return carrier


@functools.lru_cache(maxsize=1024)
def _baggage_only(header: str) -> grpc.aio.Metadata:
    """Shared metadata for the common call: no span, no metadata of its own, just decisions.

    The same few decision headers recur, and grpc sends a reused metadata
    object measurably faster than a fresh one.
    """
    return grpc.aio.Metadata(("baggage", header))


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _behavior(handler: Any) -> tuple[str, Behavior]:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return kind, behavior
    raise ValueError(f"{handler!r} has no behavior")


_MAKE_HANDLER = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class _ServerSide:
    def __init__(
        self,
        trust: Trust | None = None,
        *,
        propagate: Collection[str] | None = None,
        span: bool = True,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.trust = trust or Trust.nobody()
        self.propagate = propagate
        self.span = span
        self.tracer = trace.get_tracer("confmesh.client.interceptors", tracer_provider=tracer_provider)
        self._own_provider = tracer_provider is not None
        self._textmap: object = None
        self._fields: frozenset[str] = frozenset()
        # By (method, handler): servers hand out the same handler object per method.
        self._handlers: dict[tuple[str, int], tuple[Any, Any, bool]] = {}

    def open(self, invocation: Any, context: Any) -> _Opened:
        """Attach the caller's trace context and open the request scope.

        `context` is the servicer context, or None where the caller is not
        known yet: decisions that only the caller's certificate can make
        trusted are then not decoded but returned, for `admit`.
        """
        fields = self._propagator_fields()
        header, traced = "", False
        for key, value in invocation:
            if key == "baggage":
                header = value if isinstance(value, str) else ""
            elif key in fields:
                traced = True
        flag_set, upstream, others, waiting = "", EMPTY, header, ""
        if "cmf." in header:
            trust = self.trust
            if context is None and trust.needs_caller:
                others, waiting = codec.split_header(header, decode=False)[0], header
            else:
                trusted = trust.everyone if context is None else trust.allows_caller(context)
                others, flag_set, upstream = codec.split_header(header, decode=trusted)
        token = None
        if traced or (others and "baggage" in fields):
            metadata = {k: v for k, v in invocation if isinstance(v, str) and k != "baggage"}
            if others:
                metadata["baggage"] = others
            token = otel_context.attach(propagate.extract(metadata))
        return token, FlagScope(upstream, flag_set, self.propagate).enter(), waiting

    def admit(self, header: str, context: Any) -> None:
        """Honour the decisions `open` left waiting, if the caller is trusted."""
        scope = current_scope()
        if scope is not None and self.trust.allows_caller(context):
            _, flag_set, upstream = codec.split_header(header)
            scope.admit(upstream, flag_set)

    def start_span(self, method: str) -> tuple[Span, contextvars.Token[Context]] | None:
        """A SERVER span for the call, current until `finish`; None when nothing would record it."""
        if not self.span or not (self._own_provider or _sdk_installed()):
            return None
        span = self.tracer.start_span(method, None, SpanKind.SERVER, _rpc_attributes(method))
        if not span.is_recording():
            return None
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def finish(started: tuple[Span, contextvars.Token[Context]] | None, error: BaseException | None) -> None:
        if started is None:
            return
        span, token = started
        otel_context.detach(token)
        if isinstance(error, Exception):  # not a cancellation or a closed generator
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    def _propagator_fields(self) -> frozenset[str]:
        """The headers the global propagator reads (traceparent, baggage ...)."""
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._textmap, self._fields = textmap, frozenset(textmap.fields)
        return self._fields

    def _handler(self, handler: Any, method: str) -> tuple[Any, Any, bool]:
        """(handler, the handler wrapped, whether its behavior runs on the event loop); cached."""
        cache_key = (method, id(handler))
        hit = self._handlers.get(cache_key)
        if hit is not None and hit[0] is handler:
            return hit
        if len(self._handlers) > 4096:
            self._handlers.clear()
        kind, behavior = _behavior(handler)
        on_loop = inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
        wrapped = _MAKE_HANDLER[kind](
            self._wrap(behavior, method, on_loop, streaming=kind.endswith("_stream")),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        entry = (handler, wrapped, on_loop)
        self._handlers[cache_key] = entry
        return entry

    def _wrap(self, behavior: Behavior, method: str, on_loop: bool, streaming: bool) -> Behavior:
        """A sync behavior runs on a pool thread: everything is set up and reset on that thread."""
        open_call, start_span, finish = self.open, self.start_span, self.finish

        def serve(request: Any, context: Any) -> Any:
            token, scope_token, _ = open_call(context.invocation_metadata(), context)
            started, error = start_span(method), None
            try:
                return behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(started, error)
                close_scope(scope_token)
                if token is not None:
                    otel_context.detach(token)

        def serve_stream(request: Any, context: Any) -> Iterator[Any]:
            token, scope_token, _ = open_call(context.invocation_metadata(), context)
            started, error = start_span(method), None
            try:
                yield from behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(started, error)
                close_scope(scope_token)
                if token is not None:
                    otel_context.detach(token)

        return serve_stream if streaming else serve


class FlagServerInterceptor(_ServerSide, grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """``grpc.aio`` server interceptor (see the module docstring).

    ``grpc.aio`` runs interceptors and the handler in the same task, so for an
    async handler the scope and trace context are set up here, and the
    handler is wrapped only to end a server span or to check the caller's
    certificate before its decisions count. Sync handlers, which ``grpc.aio``
    runs in its thread pool, set up on their own thread.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        handler, wrapped, on_loop = self._handler(handler, handler_call_details.method)
        if not on_loop:
            return wrapped
        _, _, waiting = self.open(handler_call_details.invocation_metadata, None)
        if waiting:
            _awaiting_trust.set(waiting)
        elif not self.span or not (self._own_provider or _sdk_installed()):
            return handler  # runs in this task, inside the scope just opened
        return wrapped

    def _wrap(self, behavior: Behavior, method: str, on_loop: bool, streaming: bool) -> Behavior:
        if not on_loop:
            return super()._wrap(behavior, method, on_loop, streaming)
        admit, start_span, finish = self.admit, self.start_span, self.finish

        async def serve(request: Any, context: Any) -> Any:
            waiting = _awaiting_trust.get()
            if waiting:
                admit(waiting, context)
            started, error = start_span(method), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(started, error)

        async def serve_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            waiting = _awaiting_trust.get()
            if waiting:
                admit(waiting, context)
            started, error = start_span(method), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(started, error)

        return serve_stream if streaming and inspect.isasyncgenfunction(behavior) else serve


class SyncFlagServerInterceptor(_ServerSide, grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Sync ``grpc.server`` interceptor (see the module docstring)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._handler(handler, handler_call_details.method)[1]


def _outgoing_aio(metadata: Any) -> Any:
    """The call's metadata plus trace context and decisions (shared objects for the common cases)."""
    if not metadata and not otel_context.get_current():
        scope = current_scope()
        header = scope.baggage() if scope is not None else ""
        return _baggage_only(header) if header else metadata
    carrier = _carrier()
    if not carrier:
        return metadata
    if not metadata and carrier.keys() == {"baggage"}:
        return _baggage_only(carrier["baggage"])
    return grpc.aio.Metadata(*_outgoing_metadata(metadata, carrier))


class _Propagating:
    """A multicallable that adds trace context and the request's decisions to every call."""

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def __call__(self, request: Any, *, metadata: Any = None, **options: Any) -> Any:
        return self._call(request, metadata=_outgoing_aio(metadata), **options)


class FlagChannel(grpc.aio.Channel):
    """A ``grpc.aio`` channel whose calls carry the trace context and the request's flag decisions.

    Wrap the channel before making stubs from it::

        channel = FlagChannel(grpc.aio.insecure_channel(target))
        stub = InventoryStub(channel)

    A wrapper rather than a ``grpc.aio`` client interceptor: an interceptor
    makes ``grpc.aio`` run every call through an extra task, which costs more
    than everything this adds.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Propagating(self.channel.unary_unary(method, *args, **kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Propagating(self.channel.unary_stream(method, *args, **kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Propagating(self.channel.stream_unary(method, *args, **kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Propagating(self.channel.stream_stream(method, *args, **kwargs))

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.channel.channel_ready()

    async def __aenter__(self) -> FlagChannel:
        await self.channel.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.channel.__aexit__(*exc)


class _SyncDetails(
    collections.namedtuple(
        "_SyncDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class SyncFlagClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Sync channel interceptor: ``grpc.intercept_channel(channel, SyncFlagClientInterceptor())``."""

    @staticmethod
    def _details(details: Any) -> _SyncDetails:
        return _SyncDetails(
            details.method,
            details.timeout,
            _outgoing_metadata(details.metadata, _carrier()),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


__all__ = [
    "FlagChannel",
    "FlagServerInterceptor",
    "SyncFlagClientInterceptor",
    "SyncFlagServerInterceptor",
]

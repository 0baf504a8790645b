"""Flag decisions through the sync gRPC interceptors, the HTTP middlewares and the propagator."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent import futures
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from confmesh.client.interceptors import SyncFlagClientInterceptor, SyncFlagServerInterceptor
from confmesh.client.middleware import FlagScopeMiddleware, WSGIFlagScopeMiddleware
from confmesh.client.propagation import ConfmeshBaggagePropagator, Trust, inject_headers
from confmesh.flags import FlagEvaluator
from confmesh.flags.scope import request_scope

FLAGS = {"dark": {"key": "dark", "variants": {"on": True, "off": False}, "default_variant": "off"}}
FORGED = "cmf.set=prod,cmf.f.dark=1%21on%21true,team=payments"


def evaluator() -> FlagEvaluator:
    return FlagEvaluator(FLAGS, version=3, environment="prod")


def test_sync_grpc_interceptors_carry_decisions_between_threads() -> None:
    ev = evaluator()
    seen: list[Any] = []

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        d = ev.get_bool_details("dark", False)
        seen.append((d.value, d.reason.value, baggage.get_baggage("team")))
        return b"ok"

    def stream(request: bytes, context: grpc.ServicerContext) -> Any:
        yield json.dumps(ev.get_bool("dark", False)).encode()

    server = grpc.server(
        futures.ThreadPoolExecutor(2), interceptors=[SyncFlagServerInterceptor(Trust.internal())]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "demo.S",
                {
                    "U": grpc.unary_unary_rpc_method_handler(handle),
                    "S": grpc.unary_stream_rpc_method_handler(stream),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), SyncFlagClientInterceptor()
        )
        call = channel.unary_unary("/demo.S/U")
        with request_scope():
            assert FlagEvaluator(
                {**FLAGS, "dark": {**FLAGS["dark"], "default_variant": "on"}}, version=2, environment="prod"
            ).get_bool("dark", False)
            token = otel_context.attach(baggage.set_baggage("team", "payments"))
            try:
                call(b"x", timeout=5)
                streamed = list(channel.unary_stream("/demo.S/S")(b"x", timeout=5))
            finally:
                otel_context.detach(token)
        call(b"x", timeout=5)
        channel.close()
    finally:
        server.stop(None)
    # Decided upstream (on, version 2); other baggage travels too. Outside a scope: local (off).
    assert seen == [(True, "PROPAGATED", "payments"), (False, "STATIC", None)]
    assert streamed == [b"true"]


def asgi_call(app: Any, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {"type": "http", "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(app(scope, receive, send))


def test_asgi_middleware_honours_only_trusted_requests() -> None:
    ev = evaluator()
    results: list[tuple[bool, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        d = ev.get_bool_details("dark", False)
        results.append((d.value, d.reason.value))
        # What would travel on: never the forged member when untrusted.
        results.append((bool(inject_headers({}).get("baggage", "").count("cmf.f.dark")), "outgoing"))

    headers = [(b"baggage", FORGED.encode())]
    asgi_call(FlagScopeMiddleware(app), headers)
    asgi_call(FlagScopeMiddleware(app, trusted=lambda scope: True), headers)
    assert results == [(False, "STATIC"), (True, "outgoing"), (True, "PROPAGATED"), (True, "outgoing")]


def test_wsgi_middleware() -> None:
    ev = evaluator()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [json.dumps(ev.get_bool_details("dark", False).reason.value).encode()]

    def call(mw: WSGIFlagScopeMiddleware) -> bytes:
        return b"".join(mw({"HTTP_BAGGAGE": FORGED}, lambda *a: None))

    assert call(WSGIFlagScopeMiddleware(app)) == b'"STATIC"'
    assert call(WSGIFlagScopeMiddleware(app, trusted=True)) == b'"PROPAGATED"'


def test_propagator_puts_the_scope_decisions_in_standard_baggage() -> None:
    ev = evaluator()
    propagator = CompositePropagator([TraceContextTextMapPropagator(), ConfmeshBaggagePropagator()])
    forged_ctx = baggage.set_baggage("cmf.f.dark", "9!on!true")
    carrier: dict[str, str] = {}
    with request_scope():
        ev.get_bool("dark", False)
        propagator.inject(carrier, context=forged_ctx)
    assert carrier["baggage"] == "cmf.f.dark=3%21off%21false,cmf.set=prod"
    extracted = propagator.extract(carrier)
    assert baggage.get_baggage("cmf.f.dark", extracted) == "3!off!false"
    assert ConfmeshBaggagePropagator().fields == {"baggage"}
    # OTEL_PROPAGATORS=tracecontext,confmesh_baggage finds it by its entry point.
    (entry,) = entry_points(group="opentelemetry_propagator", name="confmesh_baggage")
    assert entry.load() is ConfmeshBaggagePropagator


@contextlib.asynccontextmanager
async def aio_service(interceptor: Any, handlers: dict[str, Any]) -> AsyncIterator[Any]:
    """A loopback grpc.aio server of `handlers` (service demo.S) and a FlagChannel to it, called
    from inside a request scope that decided `dark` = on at version 2."""
    import grpc.aio

    from confmesh.client.interceptors import FlagChannel

    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("demo.S", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with FlagChannel(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) as ch:
            with request_scope():
                FlagEvaluator({**FLAGS, "dark": {**FLAGS["dark"], "default_variant": "on"}}, version=2,
                              environment="prod").get_bool("dark", False)  # fmt: skip
                yield ch
    finally:
        await server.stop(None)


async def test_aio_streaming_handlers_run_inside_the_scope() -> None:
    import grpc.aio

    from confmesh.client.interceptors import FlagServerInterceptor

    ev = evaluator()

    async def generated(request: bytes, context: Any) -> Any:
        for _ in range(2):
            yield json.dumps(ev.get_bool_details("dark", False).reason.value).encode()

    async def written(request: bytes, context: Any) -> None:
        await context.write(json.dumps(ev.get_bool("dark", False)).encode())

    async def chat(requests: Any, context: Any) -> Any:
        async for _ in requests:
            yield json.dumps(ev.get_bool("dark", False)).encode()

    async def count(requests: Any, context: Any) -> bytes:
        return json.dumps([ev.get_bool("dark", False) async for _ in requests]).encode()

    async with aio_service(FlagServerInterceptor(Trust.internal()), {
        "Gen": grpc.unary_stream_rpc_method_handler(generated),
        "Write": grpc.unary_stream_rpc_method_handler(written),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Count": grpc.stream_unary_rpc_method_handler(count),
    }) as ch:  # fmt: skip
        gen = [m async for m in ch.unary_stream("/demo.S/Gen")(b"x", timeout=5)]
        wrote = [m async for m in ch.unary_stream("/demo.S/Write")(b"x", timeout=5)]
        chatted = [m async for m in ch.stream_stream("/demo.S/Chat")(iter([b"a", b"b"]), timeout=5)]
        counted = await ch.stream_unary("/demo.S/Count")(iter([b"a"]), timeout=5)
    assert gen == [b'"PROPAGATED"', b'"PROPAGATED"'] and wrote == [b"true"]
    assert chatted == [b"true", b"true"] and counted == b"[true]"  # every call kind carries the decision


async def test_a_flag_channel_keeps_the_callers_metadata_and_adds_trace_context_and_decisions() -> None:
    import grpc.aio
    from opentelemetry.sdk.trace import TracerProvider

    from confmesh.client.interceptors import FlagChannel
    from confmesh.v1 import config_pb2, config_pb2_grpc

    seen: list[dict[str, str]] = []

    async def get_snapshot(request: bytes, context: Any) -> bytes:
        seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return config_pb2.Snapshot(version=1).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("confmesh.v1.ConfigService", {
        "GetSnapshot": grpc.unary_unary_rpc_method_handler(get_snapshot),
    })])  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tracer = TracerProvider().get_tracer("test")
    try:
        async with FlagChannel(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)  # a generated stub takes the wrapper
            request = config_pb2.GetSnapshotRequest(environment="prod", service="api")
            await stub.GetSnapshot(request, timeout=5)  # nothing to add: nothing added
            with request_scope():
                evaluator().get_bool("dark", False)
                await stub.GetSnapshot(request, timeout=5, metadata=(("x-team", "payments"),))
                with tracer.start_as_current_span("call"):
                    await stub.GetSnapshot(request, timeout=5)
    finally:
        await server.stop(None)
    assert "baggage" not in seen[0] and "traceparent" not in seen[0]
    assert seen[1]["x-team"] == "payments" and "cmf.f.dark=" in seen[1]["baggage"]
    assert seen[2]["traceparent"].startswith("00-") and "cmf.f.dark=" in seen[2]["baggage"]


async def test_aio_server_serves_sync_handlers_in_scope_and_ends_spans_on_errors() -> None:
    import grpc.aio
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from confmesh.client.interceptors import FlagServerInterceptor

    ev = evaluator()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def blocking(request: bytes, context: Any) -> bytes:  # grpc.aio runs it on a pool thread
        return ev.get_bool_details("dark", False).reason.value.encode()

    async def failing(request: bytes, context: Any) -> bytes:
        raise RuntimeError("boom")

    async with aio_service(FlagServerInterceptor(Trust.internal(), tracer_provider=provider), {
        "Blocking": grpc.unary_unary_rpc_method_handler(blocking),
        "Failing": grpc.unary_unary_rpc_method_handler(failing),
    }) as ch:  # fmt: skip
        reasons = [await ch.unary_unary("/demo.S/Blocking")(b"x", timeout=5) for _ in range(2)]
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await ch.unary_unary("/demo.S/Failing")(b"x", timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNKNOWN
    assert reasons == [b"PROPAGATED", b"PROPAGATED"]  # the upstream decision, on the pool thread too
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"/demo.S/Blocking", "/demo.S/Failing"}
    failed = spans["/demo.S/Failing"]
    assert failed.status.status_code is StatusCode.ERROR and "boom" in (failed.status.description or "")
    assert [e.name for e in failed.events] == ["exception"]


async def test_aio_server_hands_back_the_handler_itself_when_it_adds_no_span() -> None:
    """The scope is opened in the interceptor, in the task the handler runs in: no wrapper needed."""
    import grpc.aio

    from confmesh.client.interceptors import FlagServerInterceptor

    async def handle(request: bytes, context: Any) -> bytes:
        return b""

    handler = grpc.unary_unary_rpc_method_handler(handle)
    details = SimpleNamespace(method="/demo.S/Call", invocation_metadata=(("baggage", FORGED),))

    async def continuation(_: Any) -> Any:
        return handler

    for trust in (Trust.internal(), Trust.nobody()):
        served = await FlagServerInterceptor(trust, span=False).intercept_service(continuation, details)
        assert served is handler
    # A caller that only its certificate can make trusted is checked in the handler's wrapper.
    checked = await FlagServerInterceptor(Trust(["svc-a.test"]), span=False).intercept_service(
        continuation, details
    )
    assert checked is not handler and checked.unary_unary is not handle

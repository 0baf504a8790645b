"""Must-show for cross-service consistency: A → B → C act on A's decision.

Three real gRPC services on loopback, each with its own confmesh client
against one real confmesh server and etcd, talk over mutual TLS. Each has
its own tracer provider and in-memory exporter, as separate processes would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import trustme
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import error_attributes, feature_flag_attributes

from confmesh.client import AdminClient, ConfigClient
from confmesh.client import telemetry as tm
from confmesh.client.interceptors import FlagChannel, FlagServerInterceptor
from confmesh.client.propagation import Trust
from confmesh.server import ConfmeshServer

FLAG = "newCheckout"
NEW_CHECKOUT = {
    "key": FLAG,
    "variants": {"on": True, "off": False},
    "default_variant": "on",
    "off_variant": "off",
}
METHOD = "/demo.Hop/Call"


def traced(name: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@dataclass
class Service:
    name: str
    client: ConfigClient[Any]
    provider: TracerProvider
    exporter: InMemorySpanExporter
    trust: Trust
    downstream: str = ""
    cert: Any = None
    server: grpc.aio.Server | None = None
    address: str = ""
    before_call: Callable[[], Awaitable[None]] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.certs = {name: self.ca.issue_cert(f"{name}.test") for name in ("svc-a", "svc-b", "rogue")}

    def server_credentials(self) -> grpc.ServerCredentials:
        pair = (self.server.private_key_pem.bytes(), self.server.cert_chain_pems[0].bytes())
        return grpc.ssl_server_credentials(
            [pair], root_certificates=self.ca.cert_pem.bytes(), require_client_auth=True
        )

    def channel(self, address: str, identity: str) -> grpc.aio.Channel:
        cert = self.certs[identity]
        creds = grpc.ssl_channel_credentials(
            self.ca.cert_pem.bytes(), cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes()
        )
        return grpc.aio.secure_channel(address, creds)


def unary(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)


async def start_service(svc: Service, pki: Pki) -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        body = json.loads(request)
        d = svc.client.flags.get_bool_details(FLAG, False, {"targetingKey": body["user"]})
        mine = {
            "value": d.value,
            "reason": d.reason.value,
            "version": d.flag_version,
            "local_version": svc.client.version,
        }
        svc.calls.append(mine)
        result = {svc.name: mine}
        if svc.downstream:
            if svc.before_call is not None:
                await svc.before_call()
            async with FlagChannel(pki.channel(svc.downstream, f"svc-{svc.name}")) as ch:
                result.update(json.loads(await unary(ch)(request, timeout=10)))
        return json.dumps(result).encode()

    interceptor = FlagServerInterceptor(svc.trust, tracer_provider=svc.provider)
    server = grpc.aio.server(interceptors=[interceptor])
    handler = grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=lambda b: b, response_serializer=lambda b: b
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("demo.Hop", {"Call": handler})])
    port = server.add_secure_port("127.0.0.1:0", pki.server_credentials())
    await server.start()
    svc.server, svc.address = server, f"127.0.0.1:{port}"


def evaluation_events(spans: tuple[ReadableSpan, ...]) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for s in spans for e in s.events if e.name == "feature_flag.evaluation"]


@pytest.fixture
async def mesh(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> AsyncIterator[dict[str, Service]]:
    await admin.put_flags("prod", {FLAG: NEW_CHECKOUT})
    pki = Pki(tmp_path)
    services: dict[str, Service] = {}
    for name, trust in (("c", Trust(["svc-b.test"])), ("b", Trust(["svc-a.test"])), ("a", Trust.nobody())):
        provider, exporter = traced(f"svc-{name}")
        client: ConfigClient[Any] = ConfigClient(
            server.address,
            environment="prod",
            service=f"svc-{name}",
            instance_id=f"svc-{name}-1",
            tracer_provider=provider,
        )
        await client.start()
        svc = Service(name, client, provider, exporter, trust)
        downstream = {"a": "b", "b": "c"}.get(name)
        svc.downstream = services[downstream].address if downstream else ""
        await start_service(svc, pki)
        services[name] = svc
    services["pki"] = pki  # type: ignore[assignment]
    uninstall = tm.instrument_flags(include_context_id=True)
    try:
        yield services
    finally:
        uninstall()
        for svc in services.values():
            if isinstance(svc, Service):
                assert svc.server is not None
                await svc.server.stop(None)
                await svc.client.close()


async def test_a_decision_holds_downstream_after_a_flip(mesh: dict[str, Service], admin: AdminClient) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    pki: Pki = mesh["pki"]  # type: ignore[assignment]
    before = a.client.version
    operator, operator_spans = traced("operator")
    flipped = asyncio.Event()

    async def flip_between_evaluation_and_call() -> None:
        with operator.get_tracer("test").start_as_current_span("operator: kill newCheckout") as span:
            written = await admin.set_flag_enabled(FLAG, False, envs=["prod"], reason="incident")
            flip_trace = span.get_span_context()
        for svc in (a, b, c):
            await svc.client.wait_for_version(written.revision, timeout=10)
        # (Evaluating here would answer from A's request scope: this runs inside A's handler.)
        assert all(not svc.client.flags.flag(FLAG).enabled for svc in (b, c))  # type: ignore[union-attr]
        mesh["flip"] = (written.revision, flip_trace)  # type: ignore[assignment]
        flipped.set()

    a.before_call = flip_between_evaluation_and_call
    async with pki.channel(a.address, "rogue") as edge:  # the edge caller is no trusted service
        result = json.loads(await unary(edge)(json.dumps({"user": "u-42"}).encode(), timeout=20))
    assert flipped.is_set()
    revision, flip_trace = mesh["flip"]  # type: ignore[misc]

    # All three act on A's decision, made before the flip with the old version.
    assert result["a"] == {"value": True, "reason": "STATIC", "version": before, "local_version": before}
    for hop in ("b", "c"):
        assert result[hop] == {
            "value": True,
            "reason": "PROPAGATED",
            "version": before,
            "local_version": revision,
        }

    # Spans in all three services carry the evaluation events, with the semconv names.
    fields = feature_flag_attributes
    for svc, reason in ((a, "static"), (b, "propagated"), (c, "propagated")):
        spans = svc.exporter.get_finished_spans()
        server_span = next(s for s in spans if s.name == METHOD)
        (event,) = evaluation_events((server_span,))
        assert event[fields.FEATURE_FLAG_KEY] == FLAG
        assert event[fields.FEATURE_FLAG_RESULT_VARIANT] == "on"
        assert event[fields.FEATURE_FLAG_RESULT_REASON] == reason
        assert event[fields.FEATURE_FLAG_PROVIDER_NAME] == "confmesh"
        assert event[fields.FEATURE_FLAG_SET_ID] == "prod"
        assert event[fields.FEATURE_FLAG_VERSION] == str(before)
        assert event[fields.FEATURE_FLAG_CONTEXT_ID] == "u-42"
        if svc is not a:
            assert event[tm.VERSION_SKEW] == revision - before
    # One trace from the edge call through A, B and C.
    trace_ids = {
        next(s for s in svc.exporter.get_finished_spans() if s.name == METHOD).context.trace_id
        for svc in (a, b, c)
    }
    assert len(trace_ids) == 1

    # The change trace: every client's apply span joins the operator's trace and links to it.
    for svc in (a, b, c):
        (apply,) = [
            s
            for s in svc.exporter.get_finished_spans()
            if s.name == "confmesh.apply" and s.attributes and s.attributes["confmesh.version"] == revision
        ]
        assert apply.context.trace_id == flip_trace.trace_id
        assert [link.context.trace_id for link in apply.links] == [flip_trace.trace_id]
        assert apply.attributes["confmesh.instance_id"] == f"svc-{svc.name}-1"
    assert operator_spans.get_finished_spans()


async def test_forged_baggage_from_an_untrusted_caller_is_ignored(mesh: dict[str, Service]) -> None:
    b, c = mesh["b"], mesh["c"]
    pki: Pki = mesh["pki"]  # type: ignore[assignment]
    await mesh["a"].client.wait_for_version(b.client.version)
    # B's own evaluation says off; the forger claims on.
    async with AdminClient(b.client.target) as admin:
        written = await admin.set_flag_enabled(FLAG, False, envs=["prod"])
    for svc in (b, c):
        await svc.client.wait_for_version(written.revision, timeout=10)
    forged = [("baggage", f"cmf.set=prod,cmf.f.{FLAG}={written.revision}%21on%21true")]
    async with pki.channel(b.address, "rogue") as rogue:
        result = json.loads(
            await unary(rogue)(json.dumps({"user": "u-1"}).encode(), metadata=forged, timeout=10)
        )
    assert result["b"]["value"] is False and result["b"]["reason"] == "DISABLED"
    # C trusts B, and B forwarded its own decision, not the forged one.
    assert result["c"]["value"] is False and result["c"]["reason"] == "PROPAGATED"
    # The same header from a trusted identity is honoured.
    async with pki.channel(b.address, "svc-a") as trusted:
        result = json.loads(
            await unary(trusted)(json.dumps({"user": "u-1"}).encode(), metadata=forged, timeout=10)
        )
    assert result["b"]["value"] is True and result["b"]["reason"] == "PROPAGATED"


def test_attribute_names_match_the_semantic_conventions_package() -> None:
    ff, err = feature_flag_attributes, error_attributes
    assert (
        tm.FEATURE_FLAG_KEY,
        tm.FEATURE_FLAG_RESULT_VARIANT,
        tm.FEATURE_FLAG_RESULT_VALUE,
        tm.FEATURE_FLAG_RESULT_REASON,
        tm.FEATURE_FLAG_PROVIDER_NAME,
        tm.FEATURE_FLAG_SET_ID,
        tm.FEATURE_FLAG_VERSION,
        tm.FEATURE_FLAG_CONTEXT_ID,
        tm.ERROR_TYPE,
        tm.ERROR_MESSAGE,
    ) == (
        ff.FEATURE_FLAG_KEY,
        ff.FEATURE_FLAG_RESULT_VARIANT,
        ff.FEATURE_FLAG_RESULT_VALUE,
        ff.FEATURE_FLAG_RESULT_REASON,
        ff.FEATURE_FLAG_PROVIDER_NAME,
        ff.FEATURE_FLAG_SET_ID,
        ff.FEATURE_FLAG_VERSION,
        ff.FEATURE_FLAG_CONTEXT_ID,
        err.ERROR_TYPE,
        err.ERROR_MESSAGE,
    )
    reasons = {v.value for v in ff.FeatureFlagResultReasonValues}
    from confmesh.flags import Reason

    assert {tm.semconv_reason(r) for r in Reason} - reasons == {"prerequisite_failed", "propagated"}

"""Flag evaluation span events, and the server's spans for writes and publishes."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from confmesh.client import AdminClient, ConfigClient
from confmesh.client import telemetry as tm
from confmesh.flags import FlagEvaluator
from confmesh.server import ConfmeshServer, ServerSettings
from tests.conftest import EtcdHandle

FLAGS = {
    "plan": {
        "key": "plan",
        "variants": {"gold": {"seats": 5}, "free": {"seats": 1}},
        "default_variant": "free",
    }
}


def recorder() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_events_carry_errors_and_only_the_data_asked_for() -> None:
    provider, exporter = recorder()
    ev = FlagEvaluator(FLAGS, version=7, environment="staging")
    remove = tm.instrument_flags()
    try:
        with provider.get_tracer("t").start_as_current_span("request"):
            ev.get_object("plan", {}, {"targetingKey": "u-1"})
            ev.get_bool("missing", False)
            ev.get_bool("plan", False)
        tm.instrument_flags(include_value=True, include_context_id=True)
        with provider.get_tracer("t").start_as_current_span("request"):
            ev.get_object("plan", {}, {"targetingKey": "u-1"})
    finally:
        remove()
    with provider.get_tracer("t").start_as_current_span("after"):
        ev.get_object("plan", {})
    first, second, after = (list(s.events) for s in exporter.get_finished_spans())
    assert after == []
    plain, missing, mismatch = (dict(e.attributes or {}) for e in first)
    assert plain == {
        "feature_flag.key": "plan",
        "feature_flag.result.reason": "static",
        "feature_flag.provider.name": "confmesh",
        "feature_flag.set.id": "staging",
        "feature_flag.version": "7",
        "feature_flag.result.variant": "free",
    }
    assert missing["error.type"] == "flag_not_found" and "not found" in missing["error.message"]
    assert missing["feature_flag.result.reason"] == "error"
    assert mismatch["error.type"] == "type_mismatch"
    (detailed,) = (dict(e.attributes or {}) for e in second)
    assert detailed["feature_flag.result.value"] == '{"seats": 1}'
    assert detailed["feature_flag.context.id"] == "u-1"


async def test_server_traces_writes_and_publishes(etcd: EtcdHandle, prefix: str) -> None:
    provider, exporter = recorder()
    client_provider, client_spans = recorder()
    server = ConfmeshServer(
        ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix),
        tracer_provider=provider,
    )
    await server.start()
    try:
        client = ConfigClient(
            server.address,
            environment="prod",
            service="api",
            start_from_defaults=True,
            tracer_provider=client_provider,
        )
        async with client, AdminClient(server.address) as admin:
            written = await admin.put("pool.size", 8, env="prod", reason="more")
            await client.wait_for_version(written.revision, timeout=10)
            (audit,) = (await admin.audit(limit=1)).records
    finally:
        await server.stop()
    write = next(s for s in exporter.get_finished_spans() if s.name == "confmesh.admin/Put")
    publish = next(s for s in exporter.get_finished_spans() if s.name == "confmesh.publish")
    apply = next(s for s in client_spans.get_finished_spans() if s.name == "confmesh.apply")
    assert publish.parent is not None and publish.parent.span_id == write.context.span_id
    assert apply.parent is not None and apply.parent.span_id == write.context.span_id
    assert audit.trace_parent.split("-")[1] == format(write.context.trace_id, "032x")

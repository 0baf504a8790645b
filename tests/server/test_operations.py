"""Health, reflection and metrics, as Kubernetes probes, grpcurl and Prometheus use them."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.version import __version__
from tests.conftest import EtcdHandle
from tests.helpers import eventually


async def test_health_reflection_and_metrics(etcd: EtcdHandle, prefix: str) -> None:
    server = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, metrics_listen="127.0.0.1:0"
        )
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "confmesh.v1.ConfigService"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING

            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            listed = {s.name async for r in call for s in r.list_services_response.service}
            assert {
                "confmesh.v1.ConfigService",
                "confmesh.v1.AdminService",
                "grpc.health.v1.Health",
            } <= listed

        async with (
            AdminClient(server.address) as admin,
            ConfigClient(server.address, environment="prod", service="api") as client,
        ):
            result = await admin.put("n", 1, env="prod")
            await client.wait_for_version(result.revision, timeout=5)

            def scrape() -> str:
                url = f"http://127.0.0.1:{server.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return str(resp.read().decode())

            await eventually(lambda: 'confmesh_acks_total{environment="prod",service="api"}' in scrape())
            text = scrape()
            assert "confmesh_streams_connected 1.0" in text
            assert 'confmesh_snapshots_pushed_total{environment="prod",service="api"}' in text
            assert 'confmesh_write_seconds_count{method="Put",outcome="ok"} 1.0' in text
            assert "confmesh_stale 0.0" in text
            assert "confmesh_propagation_seconds_count" in text
            assert f'confmesh_build_info{{version="{__version__}"}} 1.0' in text

            for path in ("/", "/metricsx", "/health", "/metrics/../x"):
                url = f"http://127.0.0.1:{server.metrics_port}{path}"
                with pytest.raises(urllib.error.HTTPError) as refused:
                    await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
                assert refused.value.code == 404, path
    finally:
        await server.stop()

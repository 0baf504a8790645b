"""Schemas are untrusted input: nothing fetched, no regex blow-up, redaction that follows the schema,
and a schema that acts only on its own scope."""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import time

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, SecretStr

from confmesh.client import AdminClient, InvalidArgument
from confmesh.keys import Layer
from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle, Tenants

PLAIN = "pw-plain-5be2c4"  # pragma: allowlist secret


async def test_a_remote_ref_is_refused_and_never_fetched(admin: AdminClient) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        for ref in (f"http://127.0.0.1:{port}/s.json", "s.json", "file:///etc/passwd"):
            schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
            with pytest.raises(InvalidArgument, match="only references inside the schema itself") as info:
                await admin.put_schema("prod", "orders", schema)
            assert info.value.code == "remote_ref"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
        # A reference inside the document resolves as before.
        local = {"$defs": {"port": {"type": "integer"}}, "type": "object",
                 "properties": {"port": {"$ref": "#/$defs/port"}}}  # fmt: skip
        await admin.put_schema("prod", "orders", local)
        with pytest.raises(InvalidArgument, match="port: 'x' is not of type 'integer'"):
            await admin.put("port", "x", env="prod", service="orders")
    finally:
        listener.close()


async def test_patterns_run_in_linear_time_and_the_server_stays_responsive(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    with pytest.raises(InvalidArgument, match="patterns run on RE2") as info:
        await admin.put_schema("prod", "orders", {"properties": {"s": {"pattern": "^(?=a)a$"}}})
    assert info.value.code == "unsupported_pattern"
    hostile = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}},
               "patternProperties": {"^(b+)+$": {"type": "integer"}}}  # fmt: skip
    await admin.put_schema("prod", "orders", hostile)

    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        latencies: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        for n in (27, 1000, 100_000):
            with pytest.raises(InvalidArgument, match="does not match"):
                await admin.put("s", "a" * n + "!", env="prod", service="orders")
        refused = time.perf_counter() - started
        stop.set()
        await prober
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert refused < 5, f"three hostile writes took {refused:.1f}s"  # backtracking took 7 s for n=27 alone
    assert p99 < 0.25, f"health p99 {p99 * 1000:.0f} ms (median {statistics.median(latencies) * 1000:.1f})"


class Peer(BaseModel):
    host: str
    password: SecretStr


class Vault(BaseModel):
    tokens: dict[str, SecretStr]
    peers: list[Peer]
    plain: str = ""


async def test_redaction_follows_the_schema_into_maps_lists_and_definitions(
    server: ConfmeshServer,
    admin: AdminClient,
    etcd: EtcdHandle,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    schema = Vault.model_json_schema()
    assert "$defs" in schema  # Peer is a definition the list refers to
    await admin.put("tokens", {}, env="prod", service="orders")
    await admin.put("peers", [], env="prod", service="orders")
    await admin.put_schema("prod", "orders", schema)
    caplog.set_level(logging.INFO, logger="confmesh.audit")
    await admin.put("tokens", {"alice": PLAIN + "-a"}, env="prod", service="orders")
    await admin.put("peers", [{"host": "h1", "password": PLAIN + "-p"}], env="prod", service="orders")
    await admin.put("tokens.bob", PLAIN + "-b", env="prod", service="orders")
    await admin.start_rollout("r1", "prod", "orders", set={"tokens.carol": PLAIN + "-c"}, percent=10)

    stored = etcd.ctl("get", "--prefix", f"{prefix}/audit/")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    code, got, err = await cli(server.address, "get", "--env", "prod", "--service", "orders")
    assert code == 0, err
    code, explained, err = await cli(server.address, "get", "tokens.bob", "--explain",
                                     "--env", "prod", "--service", "orders")  # fmt: skip
    assert code == 0, err
    code, audited, err = await cli(server.address, "audit", "--json")
    assert code == 0, err
    rollouts = str(await admin.rollouts())
    layer = str(await admin.get_layer(Layer.svc("prod", "orders")))
    for name, text in {"etcd audit records": stored, "audit log lines": logged, "get": got,
                       "get --explain": explained, "audit": audited, "rollouts": rollouts,
                       "service layer": layer}.items():  # fmt: skip
        assert PLAIN not in text, f"plaintext in {name}"
    assert "<redacted>" in got and '"host": "h1"' in got.replace("'", '"')  # only the secrets are hidden


async def test_a_schema_acts_only_on_its_own_scope(tenants: Tenants) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put("database.pool.max", 20)  # defaults
        await admin.put("database.pool.max", 30, env="prod", service="orders")
    async with tenants.admin("orders-writer") as writer:
        hostile = {"type": "object", "properties": {"database": {"type": "object", "properties": {
            "pool": {"type": "object", "properties": {"max": {"type": "integer", "format": "password",
                                                              "maximum": 50}}}}}}}  # fmt: skip
        await writer.put_schema("prod", "orders", hostile)
    async with tenants.admin("admin") as admin:
        first = await admin.put("database.pool.max", 25, reason="shared")
        await admin.put("database.pool.max", 26)
        records = (await admin.audit(key_prefix="database.pool.max")).records
        shared = next(r for r in records if r.revision == first.revision)
        (change,) = shared.changes
        assert change.old_value.number_value == 20 and change.new_value.number_value == 25
        await admin.rollback(first.revision, env="", service="")
        assert (await admin.get_layer(Layer.defaults()))[1]["database.pool.max"] == 25
        # In its own scope the schema still redacts, and its refusals of shared writes say whose it is.
        own = await admin.resolve("prod", "orders", "database.pool.max")
        assert own.value == "<redacted>"
        await admin.delete("database.pool.max", env="prod", service="orders")
        with pytest.raises(InvalidArgument) as refused:
            await admin.put("database.pool.max", 70, env="prod")
        assert "the schema of prod/orders, registered by token:orders-writer" in refused.value.message
        assert "70" not in refused.value.message  # the value is secret in that scope

"""Names nobody wrote do not run silently: a typo in an environment or service is told apart from a
known name everywhere a user types one, with the closest known names (run as a user runs it)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import aiohttp
import grpc
import pytest
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from confmesh.client import AdminClient, ConfigClient
from confmesh.keys import KeyLayout, Layer
from confmesh.server import ConfmeshServer
from confmesh.server.known_names import KnownNames
from confmesh.server.kv import KeyValue
from confmesh.server.record_kinds import server_store
from tests.cli.test_cli import cli


async def seed(admin: AdminClient) -> None:
    await admin.put("pool", 10)
    await admin.put("pool", 50, env="prod")
    await admin.put("host", "db", env="prod", service="orders")
    await admin.put("pool", 5, env="staging")


def test_known_and_closest_names() -> None:
    layout = KeyLayout("/cm")
    store = server_store(layout)
    store.replace(
        [KeyValue(layout.config_key(layer, "a"), b"1", rev) for rev, layer in enumerate(
            [Layer.defaults(), Layer.env("prod"), Layer.svc("prod", "orders"), Layer.flags("staging")], 2)],
        5,
    )  # fmt: skip
    names = KnownNames(store)
    assert names.environments() == {"prod", "staging"} and names.services() == {"orders"}
    typo = names.check("prdo", "orders")
    assert not typo.environment_known and typo.closest_environments == ["prod"]
    assert "did you mean 'prod'?" in typo.message and "Known: prod, staging." in typo.message
    assert names.check("prod", "ordres").closest_services == ["orders"]
    new_service = names.check("prod", "payments")  # no layer of its own yet: normal, not a typo
    assert new_service.ok and not new_service.service_known
    assert names.check("staging", "orders").ok  # known through its flag set alone
    assert KnownNames(server_store(layout)).check("prod").ok  # defaults alone: no name to mistype


async def test_get_refuses_an_unknown_environment_and_warns_of_a_service_typo(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await seed(admin)
    code, out, err = await cli(server.address, "get", "pool", "--env", "prdo", "--service", "orders")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "unknown environment 'prdo'" in err and "did you mean 'prod'?" in err and "--allow-unknown" in err
    code, out, err = await cli(
        server.address, "get", "pool", "--env", "prdo", "--service", "orders", "--allow-unknown"
    )
    assert (code, out.strip(), err) == (0, "10", "")
    code, out, err = await cli(server.address, "get", "pool", "--env", "prod", "--service", "ordres")
    assert (code, out.strip()) == (0, "50") and "warning: unknown service 'ordres'" in err
    assert "did you mean 'orders'?" in err
    code, out, err = await cli(server.address, "get", "pool", "--env", "prod", "--service", "payments")
    assert (code, out.strip(), err) == (0, "50", "")  # a new service: no warning


async def test_a_client_on_a_typo_warns_and_status_shows_it(
    server: ConfmeshServer, admin: AdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(admin)
    with caplog.at_level(logging.WARNING, logger="confmesh.client"):
        async with (
            ConfigClient(server.address, environment="prdo", service="orders", instance_id="typo-1") as typo,
            ConfigClient(server.address, environment="prod", service="orders", instance_id="fine-1") as fine,
        ):
            assert typo.config == {"pool": 10}  # it runs, on defaults, but it is not silent about it
            assert "unknown environment 'prdo'" in (await typo.describe_scope() or "")
            assert await fine.describe_scope() == ""
            code, out, _ = await cli(server.address, "status")
            assert code == 0 and "UNKNOWN SCOPES" in out, out
            assert "prdo/orders: 1 instance(s): unknown environment 'prdo'" in out, out
            assert "prod/orders:" not in out.split("UNKNOWN SCOPES")[1]
            code, out, _ = await cli(server.address, "status", "--json")
            by_id = {i["instance_id"]: i for i in json.loads(out)["instances"]}
            assert "did you mean 'prod'?" in by_id["typo-1"]["scope_notice"]
            assert not by_id["fine-1"].get("scope_notice")
    assert any("unknown environment 'prdo'" in r.getMessage() for r in caplog.records)


async def test_watch_says_so_on_stderr(server: ConfmeshServer, admin: AdminClient) -> None:
    await seed(admin)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", "--server", server.address, "watch", "--env", "prod",
        "--service", "ordres", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert first["config"] == {"pool": 50}
        lines = []
        while not any("warning:" in line for line in lines):
            lines.append((await asyncio.wait_for(proc.stderr.readline(), 10)).decode())
        assert "unknown service 'ordres'" in lines[-1] and "did you mean 'orders'?" in lines[-1]
    finally:
        proc.terminate()
        await proc.wait()


async def test_ofrep_and_flagd_refuse_an_unknown_environment(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await seed(admin)
    await admin.put_flags("prod", {"beta": {"variants": {"on": True, "off": False}, "default_variant": "on"}})
    base = f"{server.http_url}/environments"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/prdo/ofrep/v1/evaluate/flags/beta", json={"context": {}}) as resp:
            body = await resp.json()
            assert resp.status == 404 and body["errorCode"] == "FLAG_NOT_FOUND" and body["key"] == "beta"
            assert "unknown environment 'prdo'" in body["errorDetails"] and "'prod'" in body["errorDetails"]
        async with session.post(f"{base}/prdo/ofrep/v1/evaluate/flags", json={"context": {}}) as resp:
            assert resp.status == 404 and "did you mean 'prod'?" in (await resp.json())["errorDetails"]
        async with session.post(f"{base}/staging/ofrep/v1/evaluate/flags", json={"context": {}}) as resp:
            assert resp.status == 200 and (await resp.json())["flags"] == []  # known, with no flags
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="flagSetId=prdo"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "did you mean 'prod'?" in (info.value.details() or "")
        ok = await stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="flagSetId=prod"), timeout=10)
        assert "beta" in ok.flag_configuration

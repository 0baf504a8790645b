"""End to end: real etcd, real server, real clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from pydantic import BaseModel, ConfigDict, Field

from confmesh.client import AdminClient, ConfigClient, StartupError
from confmesh.server import ConfmeshServer
from confmesh.v1 import config_pb2
from tests.conftest import EtcdHandle
from tests.helpers import RawWatch, eventually


class Pool(BaseModel):
    max: int = Field(ge=1, le=500)


class Database(BaseModel):
    host: str = "localhost"
    pool: Pool


class Settings(BaseModel):
    database: Database
    debug: bool = False


class LenientSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
    database: dict[str, object]


async def test_a_write_reaches_a_client_within_a_second(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put("database.pool.max", 10)
    async with ConfigClient(server.address, environment="prod", service="orders", schema=Settings) as client:
        assert client.config.database.pool.max == 10
        changes: list[tuple[int, int]] = []
        client.on_change(lambda old, new: changes.append((old.database.pool.max, new.database.pool.max)))
        started = time.monotonic()
        result = await admin.put("database.pool.max", 20, env="prod")
        await client.wait_for_version(result.revision, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert client.config.database.pool.max == 20
        assert client.version == result.revision
        assert changes == [(10, 20)]


async def test_fifty_clients_converge_on_one_version_and_hash(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("database.pool.max", 1)
    clients = [
        ConfigClient(
            server.address, environment="prod", service="orders", schema=Settings, instance_id=f"i-{n}"
        )
        for n in range(50)
    ]
    await asyncio.gather(*(c.start() for c in clients))
    try:
        for n in range(2, 6):
            last = await admin.put("database.pool.max", n, env="prod")
        await asyncio.gather(*(c.wait_for_version(last.revision, timeout=10) for c in clients))
        assert {(c.version, c.hash) for c in clients} == {(last.revision, clients[0].hash)}
        assert {c.config.database.pool.max for c in clients} == {5}
        for _ in range(100):  # ACKs travel after the apply: the ledger catches up
            status = await admin.status()
            if {i.acked_version for i in status.instances} == {last.revision}:
                break
            await asyncio.sleep(0.05)
        assert len(status.instances) == 50
        assert {(i.acked_version, i.acked_hash) for i in status.instances} == {
            (last.revision, clients[0].hash)
        }
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_out_of_band_etcdctl_put_reaches_a_client(
    server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str
) -> None:
    await admin.put("database.pool.max", 3)
    async with ConfigClient(server.address, environment="prod", service="orders", schema=Settings) as client:
        await asyncio.to_thread(etcd.ctl, "put", f"{prefix}/config/env/prod/database.pool.max", "77")
        await eventually(lambda: client.config.database.pool.max == 77, timeout=3)
        # Garbage written out of band is ignored (and reported), never applied.
        await asyncio.to_thread(etcd.ctl, "put", f"{prefix}/config/env/prod/database.host", "{not json")
        await asyncio.to_thread(etcd.ctl, "put", f"{prefix}/config/env/prod/debug", "true")
        await eventually(lambda: client.config.debug is True, timeout=3)
        assert client.config.database.host == "localhost"
        assert any("not valid JSON" in why for why in server.store.bad_keys.values())


async def test_a_write_one_schema_rejects_is_nacked_and_the_other_applies_it(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    good = await admin.put("database.pool.max", 10)
    async with (
        ConfigClient(
            server.address, environment="prod", service="orders", schema=Settings, instance_id="strict"
        ) as strict,
        ConfigClient(
            server.address,
            environment="prod",
            service="orders",
            schema=LenientSettings,
            instance_id="lenient",
        ) as lenient,
    ):
        bad = await admin.put("database.pool.max", 100000, env="prod")
        await lenient.wait_for_version(bad.revision, timeout=3)
        assert lenient.config.database["pool"] == {"max": 100000}

        await eventually(lambda: strict.last_rejection is not None)
        assert strict.version == good.revision
        assert strict.config.database.pool.max == 10
        rejection = strict.last_rejection
        assert rejection is not None and rejection.version == bad.revision
        assert [i.path for i in rejection.issues] == ["database.pool.max"]

        async def ledger() -> dict[str, Any]:
            return {i.instance_id: i for i in (await admin.status()).instances}

        records = await ledger()
        for _ in range(50):  # the ACK/NACK travel after the client applied or rejected
            if records["strict"].HasField("last_nack") and records["lenient"].acked_version == bad.revision:
                break
            await asyncio.sleep(0.05)
            records = await ledger()
        assert records["strict"].acked_version == good.revision
        assert records["strict"].last_nack.version == bad.revision
        assert list(records["strict"].last_nack.field_paths) == ["database.pool.max"]
        assert "less than or equal to 500" in records["strict"].last_nack.error
        assert records["lenient"].acked_version == bad.revision
        assert not records["lenient"].HasField("last_nack")

        # The next valid write is applied by both; the NACKed version is never re-sent.
        fixed = await admin.put("database.pool.max", 42, env="prod")
        await strict.wait_for_version(fixed.revision, timeout=3)
        assert strict.config.database.pool.max == 42


async def test_layers_merge_and_deleting_uncovers_end_to_end(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("database", {"host": "db", "pool": {"max": 10}})
    await admin.put("database.pool.max", 50, env="prod")
    await admin.put("database.host", "db-orders", env="prod", service="orders")
    async with ConfigClient(server.address, environment="prod", service="orders", schema=Settings) as client:
        assert client.raw == {"database": {"host": "db-orders", "pool": {"max": 50}}}
        explained = await admin.resolve("prod", "orders", "database.pool.max")
        assert [str(lv.layer) for lv in explained.layers] == ["defaults", "env/prod"]
        assert explained.value == 50

        versions = [client.version]
        deleted = await admin.delete("database.pool.max", env="prod")
        await client.wait_for_version(deleted.revision, timeout=3)
        assert client.config.database.pool.max == 10
        deleted = await admin.delete("database.host", env="prod", service="orders")
        await client.wait_for_version(deleted.revision, timeout=3)
        assert client.config.database.host == "db"
        versions.append(client.version)
        assert versions == sorted(versions) and len(set(versions)) == 2
        # Another service in the environment never sees the orders service layer.
        billing = await admin.resolve("prod", "billing")
        assert billing.config == {"database": {"host": "db", "pool": {"max": 10}}}


async def test_resume_with_the_current_version_gets_nothing_and_an_old_one_the_latest(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    first = await admin.put("database.pool.max", 1)
    latest = await admin.put("database.pool.max", 2)
    snap = await admin.snapshot("prod", "orders")
    assert snap.version == latest.revision

    current = RawWatch(server.address)
    current.subscribe("prod", "orders", version=snap.version, hash_=snap.hash)
    msg = await current.next_message(timeout=3)  # heartbeat interval is 1 s in tests
    assert msg.WhichOneof("kind") == "heartbeat"
    await current.close()

    old = RawWatch(server.address)
    old.subscribe("prod", "orders", version=first.revision, hash_="sha256:old")
    got = await old.next_snapshot()
    assert (got.version, got.hash) == (snap.version, snap.hash)
    await old.close()


async def test_malformed_requests_get_clear_errors_and_others_keep_being_served(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("database.pool.max", 1)
    async with ConfigClient(
        server.address, environment="prod", service="orders", schema=Settings
    ) as bystander:

        async def error_of(raw: RawWatch) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw.next_snapshot()
            await raw.close()
            return info.value

        no_subscribe = RawWatch(server.address)
        no_subscribe.send(config_pb2.WatchRequest(ack=config_pb2.Ack(version=1, hash="x")))
        err = await error_of(no_subscribe)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first message" in (err.details() or "")

        bad_env = RawWatch(server.address)
        bad_env.subscribe("Prod!", "orders")
        err = await error_of(bad_env)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "invalid environment name 'Prod!'" in (err.details() or "")

        unknown_nack = RawWatch(server.address)
        unknown_nack.subscribe("prod", "orders")
        snap = await unknown_nack.next_snapshot()
        unknown_nack.send(
            config_pb2.WatchRequest(nack=config_pb2.Nack(version=snap.version + 99, hash="h", error="x"))
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unknown_nack.next_snapshot()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "never sent" in (info.value.details() or "")
        await unknown_nack.close()

        twice = RawWatch(server.address)
        twice.subscribe("prod", "orders")
        await twice.next_snapshot()
        twice.subscribe("prod", "orders")
        err = await error_of(twice)
        assert "exactly one subscribe" in (err.details() or "")

        result = await admin.put("database.pool.max", 9)
        await bystander.wait_for_version(result.revision, timeout=3)
        assert bystander.config.database.pool.max == 9


async def test_startup_waits_with_a_clear_error_or_starts_from_defaults(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    class Optional_(BaseModel):
        workers: int = 4

    with pytest.raises(StartupError, match="rejected"):
        async with ConfigClient(
            server.address, environment="prod", service="orders", schema=Settings, startup_timeout=1.0
        ):
            pass

    async with ConfigClient(
        "127.0.0.1:1", environment="prod", service="orders", schema=Optional_, start_from_defaults=True
    ) as offline:
        assert offline.config.workers == 4
        assert offline.version == 0

    with pytest.raises(StartupError, match="not reachable"):
        async with ConfigClient("127.0.0.1:1", environment="prod", service="orders", startup_timeout=0.5):
            pass

    with pytest.raises(StartupError, match="fields without defaults"):
        async with ConfigClient(
            server.address, environment="prod", service="orders", schema=Settings, start_from_defaults=True
        ):
            pass

    await admin.put("workers", 8, env="prod")
    async with ConfigClient(
        server.address, environment="prod", service="orders", schema=Optional_, start_from_defaults=True
    ) as live:
        await eventually(lambda: live.config.workers == 8)


async def test_history_is_bounded_and_versions_only_grow(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put("database.pool.max", 1)
    async with ConfigClient(
        server.address, environment="prod", service="orders", schema=Settings, history_size=3
    ) as client:
        for n in range(2, 7):
            result = await admin.put("database.pool.max", n)
            await client.wait_for_version(result.revision, timeout=3)
        versions = [h.version for h in client.history]
        assert len(versions) == 3 and versions == sorted(versions)
        assert client.history[-1].config.database.pool.max == 6


async def test_a_client_reconnects_after_the_server_restarts(etcd: EtcdHandle, prefix: str) -> None:
    from confmesh.server import ServerSettings

    settings = ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    first = ConfmeshServer(settings)
    await first.start()
    port = first.port
    async with AdminClient(first.address) as admin:
        await admin.put("database.pool.max", 1)
    client = ConfigClient(
        first.address,
        environment="prod",
        service="orders",
        schema=Settings,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    await client.start()
    applied: list[int] = []
    client.on_change(lambda _o, _n: applied.append(client.version))
    await first.stop()
    second = ConfmeshServer(
        ServerSettings(listen=f"127.0.0.1:{port}", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    )
    await second.start()
    try:
        async with AdminClient(second.address) as admin:
            result = await admin.put("database.pool.max", 2)
        await client.wait_for_version(result.revision, timeout=5)
        assert client.config.database.pool.max == 2
        assert client.reconnects >= 1
        assert applied == [result.revision]
    finally:
        await client.close()
        await second.stop()

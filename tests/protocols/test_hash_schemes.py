"""Hash schemes on a live server: new clients get jcs-leafsum256 and deltas, old ones leafsum256 as before."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from confmesh.client import AdminClient, ConfigClient
from confmesh.digest import JCS, LEAFSUM, matches, scheme_of, snapshot_hash
from confmesh.server import ConfmeshServer
from confmesh.v1 import config_pb2, config_pb2_grpc
from confmesh.wire import from_struct
from tests.helpers import RawWatch, eventually

# Python prints these differently from ECMAScript: the two schemes disagree on them.
TRICKY = {"sample_rate": 0.00001, "big": 1e16, "ratio": 9.5e15, "tiny": 1e-7}


def ack(snap: config_pb2.Snapshot) -> config_pb2.WatchRequest:
    return config_pb2.WatchRequest(ack=config_pb2.Ack(version=snap.version, hash=snap.hash))


async def until_acked(admin: AdminClient, instance_id: str, expected: tuple[int, str]) -> None:
    """Poll status until the ledger shows `instance_id` running `expected` (version, hash)."""
    got: tuple[int, str] | None = None
    for _ in range(250):
        status = await admin.status()
        records = [i for i in status.instances if i.instance_id == instance_id]
        got = (records[0].acked_version, records[0].acked_hash) if records else None
        if got == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{instance_id} runs {got}, not {expected}")


async def test_an_old_client_keeps_its_scheme_and_gets_whole_snapshots(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    for key, value in TRICKY.items():
        await admin.put(f"metrics.{key}", value, env="prod")
    old, new = RawWatch(server.address), RawWatch(server.address)
    try:
        old.subscribe("prod", "api", instance_id="old", accept_delta=True, hash_schemes=())
        new.subscribe("prod", "api", instance_id="new", accept_delta=True)
        first_old, first_new = await old.next_snapshot(), await new.next_snapshot()
        config, flags = from_struct(first_old.config), from_struct(first_old.flags)
        assert first_old.hash == snapshot_hash(config, flags, LEAFSUM)
        assert first_new.hash == snapshot_hash(config, flags, JCS)
        assert first_old.hash.split(":")[1] != first_new.hash.split(":")[1]
        old.send(ack(first_old))
        new.send(ack(first_new))

        await admin.put("metrics.sample_rate", 0.00002, env="prod")
        second_old, second_new = await old.next_snapshot(), await new.next_snapshot()
        assert second_new.HasField("delta") and scheme_of(second_new.delta.base_hash) == JCS
        assert not second_old.HasField("delta"), "an old client gets whole snapshots"
        assert matches(second_old.hash, from_struct(second_old.config), from_struct(second_old.flags))
        assert scheme_of(second_old.hash) == LEAFSUM
        old.send(ack(second_old))
        new.send(ack(second_new))
        await until_acked(admin, "old", (second_old.version, second_old.hash))
        await until_acked(admin, "new", (second_new.version, second_new.hash))

        # A report of what it runs, in its own scheme, asks for nothing again.
        old.send(
            config_pb2.WatchRequest(
                report=config_pb2.Report(version=second_old.version, hash=second_old.hash)
            )
        )
        await admin.put("other", 1, env="prod", service="unrelated")
        with pytest.raises(TimeoutError):
            await old.next_snapshot(timeout=1.0)
    finally:
        await old.close()
        await new.close()


async def test_an_old_client_resumes_without_a_resend(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put("metrics.sample_rate", 0.00001, env="prod")
    first = RawWatch(server.address)
    first.subscribe("prod", "api", instance_id="old", hash_schemes=())
    snap = await first.next_snapshot()
    await first.close()
    again = RawWatch(server.address)
    try:
        again.subscribe(
            "prod", "api", instance_id="old", version=snap.version, hash_=snap.hash, hash_schemes=()
        )
        message = await again.next_message()
        assert message.WhichOneof("kind") == "heartbeat", "already current: nothing to send"
        again.send(config_pb2.WatchRequest(report=config_pb2.Report(version=snap.version, hash=snap.hash)))
        with pytest.raises(TimeoutError):
            await again.next_snapshot(timeout=1.0)
    finally:
        await again.close()


@pytest.mark.parametrize(
    "schemes", [["sha3-tree"], ["x" * 65], [JCS] * 9], ids=["unknown", "long-name", "too-many"]
)
async def test_hash_schemes_are_bounded_and_must_meet(server: ConfmeshServer, schemes: list[str]) -> None:
    watch = RawWatch(server.address)
    try:
        watch.subscribe("prod", "api", hash_schemes=schemes)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await watch.next_message()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hash_schemes" in (err.value.details() or "") or "hash scheme" in (err.value.details() or "")
    finally:
        await watch.close()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSnapshot(
                config_pb2.GetSnapshotRequest(environment="prod", service="api", hash_schemes=schemes)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_snapshot_answers_in_the_scheme_asked_for(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("metrics.sample_rate", 0.00001, env="prod")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        legacy = await stub.GetSnapshot(config_pb2.GetSnapshotRequest(environment="prod", service="api"))
        current = await stub.GetSnapshot(
            config_pb2.GetSnapshotRequest(environment="prod", service="api", hash_schemes=[JCS])
        )
    assert scheme_of(legacy.hash) == LEAFSUM and scheme_of(current.hash) == JCS
    for snap in (legacy, current):
        assert matches(snap.hash, from_struct(snap.config), from_struct(snap.flags))


async def test_the_python_client_applies_tricky_numbers_with_jcs(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    for key, value in TRICKY.items():
        await admin.put(f"metrics.{key}", value, env="prod")
    async with ConfigClient(server.address, environment="prod", service="api", instance_id="py") as client:
        assert client.hash.startswith(f"{JCS}:")
        assert client.config["metrics"]["sample_rate"] == 0.00001
        result = await admin.put("metrics.sample_rate", 0.00003, env="prod")
        await eventually(lambda: client.version == result.revision)
        await until_acked(admin, "py", (client.version, client.hash))

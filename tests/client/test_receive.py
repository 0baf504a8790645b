"""The client's validate-then-apply rules, fed snapshots directly."""

from __future__ import annotations

from pydantic import BaseModel

from confmesh.client import ConfigClient
from confmesh.merge import snapshot_hash
from confmesh.v1 import config_pb2
from confmesh.wire import to_struct


class Settings(BaseModel):
    n: int


def snapshot(version: int, config: dict[str, object], hash_: str | None = None) -> config_pb2.Snapshot:
    return config_pb2.Snapshot(
        environment="prod", service="api", version=version,
        hash=hash_ or snapshot_hash(config, {}), config=to_struct(config),
    )  # fmt: skip


async def test_apply_ack_then_refuse_older_corrupt_and_invalid_snapshots() -> None:
    client: ConfigClient[Settings] = ConfigClient(
        "127.0.0.1:1", environment="prod", service="api", schema=Settings
    )
    seen: list[tuple[object, int]] = []
    client.on_change(lambda old, new: seen.append((old, new.n)))

    reply = await client._receive(snapshot(5, {"n": 1}))
    assert reply.WhichOneof("kind") == "ack" and reply.ack.version == 5
    assert client.config.n == 1

    # The same version again: ACK, not applied twice, no callback.
    reply = await client._receive(snapshot(5, {"n": 1}))
    assert reply.WhichOneof("kind") == "ack"
    assert len(client.history) == 1

    older = await client._receive(snapshot(4, {"n": 0}))
    assert older.WhichOneof("kind") == "nack" and "older than the running version 5" in older.nack.error
    assert older.nack.running_version == 5

    corrupt = await client._receive(snapshot(6, {"n": 2}, hash_="sha256:" + "0" * 64))
    assert corrupt.WhichOneof("kind") == "nack" and "does not match its hash" in corrupt.nack.error

    invalid = await client._receive(snapshot(7, {"n": "many"}))
    assert invalid.WhichOneof("kind") == "nack"
    assert [fe.path for fe in invalid.nack.field_errors] == ["n"]
    assert client.version == 5 and client.config.n == 1

    # Same content under a newer version: the version moves, callbacks do not fire.
    bump = await client._receive(snapshot(8, {"n": 1}))
    assert bump.WhichOneof("kind") == "ack" and client.version == 8
    assert seen == [(None, 1)]

"""The client's validate-then-apply rules, fed snapshots directly."""

from __future__ import annotations

from pydantic import BaseModel

from confmesh.client import ConfigClient
from confmesh.digest import snapshot_hash
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

    corrupt = await client._receive(snapshot(6, {"n": 2}, hash_="leafsum256:" + "0" * 64))
    assert corrupt.WhichOneof("kind") == "nack" and "does not match its hash" in corrupt.nack.error

    invalid = await client._receive(snapshot(7, {"n": "many"}))
    assert invalid.WhichOneof("kind") == "nack"
    assert [fe.path for fe in invalid.nack.field_errors] == ["n"]
    assert client.version == 5 and client.config.n == 1

    # Same content under a newer version: the version moves, callbacks do not fire.
    bump = await client._receive(snapshot(8, {"n": 1}))
    assert bump.WhichOneof("kind") == "ack" and client.version == 8
    assert seen == [(None, 1)]


async def test_a_delta_applies_only_to_the_version_it_was_made_from() -> None:
    from confmesh.delta import CONFIG, Update
    from confmesh.wire import updates_to_pb

    client: ConfigClient[Settings] = ConfigClient(
        "127.0.0.1:1", environment="prod", service="api", schema=Settings
    )
    first = snapshot(5, {"n": 1, "other": {"x": 1}})
    await client._receive(first)

    def delta(version: int, base: tuple[int, str], n: int, hash_: str | None = None) -> config_pb2.Snapshot:
        snap = config_pb2.Snapshot(
            environment="prod", service="api", version=version,
            hash=hash_ or snapshot_hash({"n": n, "other": {"x": 1}}, {}),
        )  # fmt: skip
        snap.delta.base_version, snap.delta.base_hash = base
        snap.delta.updates.extend(updates_to_pb([Update(CONFIG, ("n",), n)]))
        return snap

    parsed_flags = client.flags.flag_set
    reply = await client._receive(delta(6, (5, first.hash), 2))
    assert reply.WhichOneof("kind") == "ack" and client.config.n == 2 and client.deltas_applied == 1
    assert client.flags.flag_set is parsed_flags and client.flags.version == 6  # not parsed again
    assert client.raw == {"n": 2, "other": {"x": 1}}

    # Made from a version we do not run: ask for the whole snapshot, keep running 6.
    wrong_base = await client._receive(delta(7, (5, first.hash), 3))
    assert wrong_base.WhichOneof("kind") == "report" and wrong_base.report.need_full
    assert (wrong_base.report.version, client.config.n) == (6, 2)

    # The right base but a result that does not give the hash: the same.
    bad = await client._receive(delta(7, (6, client.hash), 3, hash_="leafsum256:" + "1" * 64))
    assert bad.WhichOneof("kind") == "report" and bad.report.need_full and client.version == 6

    # A delta whose result breaks the schema is NACKed like any snapshot.
    invalid = delta(8, (6, client.hash), 0)
    invalid.delta.updates[0].value.string_value = "many"
    invalid.hash = snapshot_hash({"n": "many", "other": {"x": 1}}, {})
    nack = await client._receive(invalid)
    assert nack.WhichOneof("kind") == "nack" and client.version == 6

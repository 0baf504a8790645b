"""Delta updates end to end: small on the wire, the same result as a whole snapshot, safe fallbacks."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient, ConfigClient, InvalidArgument, NotFound
from confmesh.delta import apply_updates
from confmesh.digest import format_hash, snapshot_digest
from confmesh.keys import Layer
from confmesh.server import ConfmeshServer
from confmesh.v1 import config_pb2
from confmesh.wire import from_struct, updates_from_pb
from tests.helpers import RawWatch, eventually

FLAG = {"variants": {"on": True, "off": False}, "default_variant": "off"}


def docs(snap: config_pb2.Snapshot) -> tuple[dict[str, Any], dict[str, Any]]:
    return from_struct(snap.config), from_struct(snap.flags)


def patched(
    base: tuple[dict[str, Any], dict[str, Any]], snap: config_pb2.Snapshot
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply `snap`'s delta to `base` as a client does, checking the hash."""
    config, flags = base
    new_config, new_flags, digest = apply_updates(
        config, flags, snapshot_digest(config, flags), updates_from_pb(snap.delta.updates)
    )
    assert format_hash(digest) == snap.hash
    return new_config, new_flags


async def seed(admin: AdminClient, keys: int) -> None:
    await admin.apply(
        [ChangeSpec(Layer.defaults(), f"app.k{n}", n) for n in range(keys)]
        + [ChangeSpec(Layer.env("prod"), "database", {"host": "db", "pool": {"max": 5}})]
    )
    await admin.put_flags("prod", {"checkout": FLAG})


async def test_a_one_key_change_travels_as_a_small_delta(server: ConfmeshServer, admin: AdminClient) -> None:
    await seed(admin, 900)
    watch = RawWatch(server.address)
    try:
        watch.subscribe("prod", "orders", accept_delta=True)
        first = await watch.next_snapshot()
        assert not first.HasField("delta")
        whole = first.ByteSize()
        assert whole > 10_000
        current = docs(first)
        base = (first.version, first.hash)

        writes = [
            lambda: admin.put("app.k7", 70),  # one leaf
            lambda: admin.put("database.pool.max", 9, env="prod", service="orders"),  # under an object
            lambda: admin.delete("database", env="prod"),  # a subtree goes, the service's key stays
            lambda: admin.put_flags("prod", {"checkout": {**FLAG, "default_variant": "on"}}),
            lambda: admin.delete_flag("prod", "checkout"),
        ]
        for write in writes:
            result = await write()
            snap = await watch.next_snapshot()
            assert snap.version == result.revision
            assert snap.HasField("delta"), "a client running the previous version gets a delta"
            assert (snap.delta.base_version, snap.delta.base_hash) == base
            assert snap.ByteSize() < 400 < whole
            current = patched(current, snap)
            expected = await admin.snapshot("prod", "orders")
            assert current == docs(expected) and snap.hash == expected.hash
            watch.send(config_pb2.WatchRequest(ack=config_pb2.Ack(version=snap.version, hash=snap.hash)))
            base = (snap.version, snap.hash)
        assert current[0]["database"] == {"pool": {"max": 9}}
        assert current[1] == {}
    finally:
        await watch.close()


async def test_a_client_that_cannot_apply_a_delta_gets_the_whole_snapshot(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await seed(admin, 10)
    watch = RawWatch(server.address)
    try:
        watch.subscribe("prod", "orders", accept_delta=True)
        first = await watch.next_snapshot()
        await admin.put("app.k1", 100)
        delta = await watch.next_snapshot()
        assert delta.HasField("delta")
        # Say we still run the first version and could not use the delta.
        watch.send(config_pb2.WatchRequest(
            report=config_pb2.Report(version=first.version, hash=first.hash, need_full=True)
        ))  # fmt: skip
        again = await watch.next_snapshot()
        assert (again.version, again.hash) == (delta.version, delta.hash)
        assert not again.HasField("delta") and docs(again)[0]["app"]["k1"] == 100

        # After a NACK the server no longer knows what the client runs: the next push is whole.
        watch.send(config_pb2.WatchRequest(nack=config_pb2.Nack(
            version=again.version, hash=again.hash, running_version=first.version, error="no"
        )))  # fmt: skip
        await admin.put("app.k2", 200)
        after_nack = await watch.next_snapshot()
        assert not after_nack.HasField("delta") and docs(after_nack)[0]["app"]["k2"] == 200
    finally:
        await watch.close()


async def test_a_resuming_client_gets_one_delta_across_the_versions_it_missed(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await seed(admin, 50)
    first_watch = RawWatch(server.address)
    first_watch.subscribe("prod", "orders", accept_delta=True)
    first = await first_watch.next_snapshot()
    await first_watch.close()
    # Keep the scope resolved on the server while the client is away.
    holder = RawWatch(server.address)
    holder.subscribe("prod", "orders", instance_id="holder")
    await holder.next_snapshot()
    try:
        await admin.put("app.k1", "one")
        await admin.delete("app.k2")
        # In a higher layer, k1 turns from a scalar into an object.
        last = await admin.put("app.k1.deeper", True, env="prod")
        watch = RawWatch(server.address)
        watch.subscribe("prod", "orders", version=first.version, hash_=first.hash, accept_delta=True)
        resumed = await watch.next_snapshot()
        assert resumed.version == last.revision
        assert resumed.HasField("delta") and resumed.delta.base_version == first.version
        current = patched(docs(first), resumed)
        assert current == docs(await admin.snapshot("prod", "orders"))
        assert current[0]["app"]["k1"] == {"deeper": True} and "k2" not in current[0]["app"]
        await watch.close()
    finally:
        await holder.close()


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")
    limit: int = Field(default=1, ge=1)


async def test_config_clients_stay_equal_to_the_server_through_random_changes(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    """Random writes, deletes and object/scalar flips in every layer: deltas never drift."""
    rng = random.Random(7)
    await seed(admin, 20)
    layers = [(None, None), ("prod", None), ("prod", "orders")]
    keys = ["a", "a.b", "a.b.c", "a.d", "e", "limit", "app.k3", "app.k3.x"]
    async with ConfigClient(server.address, environment="prod", service="orders", schema=Lenient) as client:
        for _ in range(40):
            env, service = rng.choice(layers)
            key = rng.choice(keys)
            if rng.random() < 0.3:
                try:
                    await admin.delete(key, env=env, service=service)
                except NotFound:
                    continue
            else:
                value = rng.choice([1, 2, "x", {"z": 1}, [1, 2], {}])
                if key == "limit":
                    value = rng.choice([0, 3, 4])  # 0 breaks the schema: a NACK in the middle
                try:
                    await admin.put(key, value, env=env, service=service)
                except InvalidArgument:  # a key below a scalar of the same layer is refused
                    continue
            expected = await admin.snapshot("prod", "orders")

            def caught_up(expected: config_pb2.Snapshot = expected) -> bool:
                return client.version == expected.version or (
                    client.last_rejection is not None and client.last_rejection.version == expected.version
                )

            await eventually(caught_up, timeout=5)
            if client.version == expected.version:
                assert client.hash == expected.hash
                assert dict(client.raw) == from_struct(expected.config)
        assert client.deltas_applied > 10

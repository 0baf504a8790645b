"""The history checker: every client's applied history must be sane and end where etcd is.

For each client: versions strictly increase (never an older version, never
the same version twice) and the last applied (version, hash) equals what
etcd holds for its scope, resolved independently from a fresh list.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from confmesh.client import ConfigClient
from confmesh.keys import KeyLayout
from confmesh.server.etcd import Etcd
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from tests.helpers import eventually


async def etcd_truth(endpoints: Sequence[str], prefix: str, env: str, service: str) -> tuple[int, str]:
    """(version, hash) of a scope, resolved from a fresh list of etcd."""
    from confmesh.keys import Scope

    etcd = Etcd(list(endpoints))
    await etcd.connect()
    try:
        revision, kvs = await etcd.list_prefix(KeyLayout(prefix).prefix + "/")
    finally:
        await etcd.close()
    store = server_store(KeyLayout(prefix))
    store.replace(kvs, revision)
    snap = SnapshotPlane(store).current(Scope(env, service))
    return snap.version, snap.hash


def check_history(client: ConfigClient[Any]) -> list[int]:
    versions = [h.version for h in client.history]
    assert len(versions) < client.history.maxlen, "history overflowed; raise history_size"  # type: ignore[operator]
    assert versions == sorted(versions), f"{client.instance_id} applied versions out of order: {versions}"
    assert len(set(versions)) == len(versions), f"{client.instance_id} applied a version twice: {versions}"
    return versions


async def assert_converged(
    clients: Sequence[ConfigClient[Any]], endpoints: Sequence[str], prefix: str, timeout: float = 20.0
) -> None:
    """Every client's history is sane and its final state is etcd's."""
    env, service = clients[0].scope.environment, clients[0].scope.service
    version, hash_ = await etcd_truth(endpoints, prefix, env, service)
    with contextlib.suppress(AssertionError):
        await eventually(lambda: all(c.hash == hash_ for c in clients), timeout)
    for client in clients:
        check_history(client)
        assert client.hash == hash_, f"{client.instance_id} ended on {client.version}, etcd is at {version}"
        assert client.version >= version


async def etcd_put(endpoints: Sequence[str], key: str, value: str, *, timeout: float = 15.0) -> int:
    """Write straight to etcd (out of band), retrying while it starts up; returns the revision."""
    from etcd3aio.kv import KVService

    from confmesh.errors import Unavailable

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    etcd = Etcd(list(endpoints))
    await etcd.connect()
    try:
        while True:
            try:
                resp = await etcd.txn([], [KVService.txn_op_put(key, value.encode())])
                return int(resp.header.revision)
            except Unavailable:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await etcd.close()


async def etcd_compact(endpoints: Sequence[str], revision: int) -> None:
    etcd = Etcd(list(endpoints))
    await etcd.connect()
    try:
        await etcd.compact(revision)
    finally:
        await etcd.close()

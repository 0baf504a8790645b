"""A 3-member etcd cluster and 2 confmesh replicas: lose the etcd leader, then a replica.

How this maps to production is described in docs/operations.md ("Failure
drill").
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from confmesh.client import AdminClient, ConfmeshError
from confmesh.server import EmbeddedEtcd
from confmesh.server.embedded_etcd import free_port
from tests.conftest import etcdctl_binary
from tests.reliability.conftest import ServerProcess
from tests.reliability.history import assert_converged
from tests.reliability.test_failures import client

pytestmark = pytest.mark.etcd  # starts servers or an etcd of its own


async def start_cluster(tmp_path: Path) -> list[EmbeddedEtcd]:
    names = ["e0", "e1", "e2"]
    ports = [(free_port(), free_port()) for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in zip(names, ports, strict=True))
    members = [
        EmbeddedEtcd(tmp_path / n, name=n, client_port=c, peer_port=p,
                     extra_args=["--initial-cluster", initial, "--initial-cluster-token", "confmesh-test",
                                 "--heartbeat-interval", "50", "--election-timeout", "500"])
        for n, (c, p) in zip(names, ports, strict=True)
    ]  # fmt: skip
    await asyncio.gather(*(m.start(timeout=60) for m in members))
    return members


def leader_index(members: list[EmbeddedEtcd]) -> int:
    out = subprocess.run(
        [etcdctl_binary(), "--endpoints=" + ",".join(m.endpoint for m in members), "endpoint", "status",
         "-w", "json"],
        check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    endpoints = [m.endpoint for m in members]
    for status in json.loads(out.stdout):
        if status["Status"]["header"]["member_id"] == status["Status"]["leader"]:
            return endpoints.index(status["Endpoint"])
    raise AssertionError("the cluster has no leader")


@pytest.mark.slow
async def test_leader_and_replica_loss_under_writes(tmp_path: Path, servers: list[ServerProcess]) -> None:
    members = await start_cluster(tmp_path)
    endpoints = ",".join(m.endpoint for m in members)
    try:
        a = await ServerProcess(endpoints, "/cm").start()
        servers.append(a)
        b = await ServerProcess(endpoints, "/cm").start()
        servers.append(b)
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        clients = [client(target, f"c{i}") for i in range(6)]
        stop = asyncio.Event()
        written: list[int] = []

        async def writer() -> None:
            async with AdminClient(target, timeout=3) as admin:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        await admin.put("n", n, env="prod")
                        written.append(n)
                    except ConfmeshError:
                        await asyncio.sleep(0.1)  # election or failover in progress: retry
                    await asyncio.sleep(0.02)

        async with AdminClient(target) as admin:
            await admin.put("n", 0, env="prod")
        await asyncio.gather(*(c.start() for c in clients))
        task = asyncio.create_task(writer())
        try:
            await asyncio.sleep(1.0)
            leader = leader_index(members)
            members[leader].kill()
            await asyncio.sleep(1.5)
            a.signal(signal.SIGKILL)
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            await task
        survivors = [m.endpoint for i, m in enumerate(members) if i != leader]
        assert len(written) > 20
        await assert_converged(clients, survivors, "/cm", timeout=30)
        assert all(c.config.n == written[-1] for c in clients)
        assert all(c.deltas_applied > 0 for c in clients)
        await asyncio.gather(*(c.close() for c in clients))
    finally:
        for m in members:
            await m.stop()

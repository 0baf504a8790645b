"""`confmesh serve --workers 2`: two processes on one port, one fleet, one drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from confmesh.client import AdminClient, ConfigClient
from confmesh.server.embedded_etcd import free_port
from tests.conftest import EtcdHandle

pytestmark = pytest.mark.slow


async def serve(*args: str, cwd: Path) -> tuple[asyncio.subprocess.Process, str]:
    address = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", "serve", "--workers", "2", "--listen", address,
        "--fleet-interval", "0.2", "--fleet-ttl", "2", "--log-level", "warning", *args,
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.decode().startswith(f"confmesh serving on {address} ") and b"2 workers" in line, line
    return proc, address


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def is_worker(pid: int) -> bool:
    return b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def fleet_of(address: str, clients: int) -> tuple[set[str], list[Any]]:
    async with AdminClient(address) as admin:
        status = await admin.status()
    return set(status.replicas), [i for i in status.instances if i.connected]


@pytest.mark.parametrize("etcd_kind", ["embedded", "external"])
async def test_two_workers_share_a_port_and_one_fleet_and_drain_on_sigterm(
    etcd_kind: str, etcd: EtcdHandle, prefix: str, tmp_path: Path
) -> None:
    extra = ("--etcd", etcd.endpoint, "--prefix", prefix) if etcd_kind == "external" else ()
    proc, address = await serve(*extra, cwd=tmp_path)
    workers = children(proc.pid)
    clients: list[ConfigClient[Any]] = []
    try:
        assert len([p for p in workers if is_worker(p)]) == 2
        async with AdminClient(address) as admin:
            await admin.put("pool", 10, env="prod", service="api")
        # Each client on a connection of its own (as separate processes would be; in one process
        # grpc shares one), so the kernel spreads them over the two workers.
        own = [("grpc.use_local_subchannel_pool", 1)]
        clients = [
            ConfigClient(
                address, environment="prod", service="api", instance_id=f"api-{i}", channel_options=own
            )
            for i in range(20)
        ]
        await asyncio.gather(*(c.start() for c in clients))
        deadline = time.monotonic() + 10
        while True:
            replicas, instances = await fleet_of(address, 20)
            if len(instances) == 20 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert len(replicas) == 2 and len(instances) == 20
        assert {i.server_id for i in instances} == replicas  # both workers hold streams
        # Whichever worker answers, it lists the other's instances too.
        for _ in range(6):
            assert len((await fleet_of(address, 20))[1]) == 20
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0 and time.monotonic() - started < 10
    assert not any(alive(p) for p in workers), "a worker outlived the parent"
    if etcd_kind == "embedded":
        assert not running(str(tmp_path / "confmesh-data" / "etcd")), "the embedded etcd outlived the server"


async def test_a_worker_that_dies_stops_the_server(etcd: EtcdHandle, prefix: str, tmp_path: Path) -> None:
    proc, _ = await serve("--etcd", etcd.endpoint, "--prefix", prefix, cwd=tmp_path)
    workers = children(proc.pid)
    os.kill(workers[0], signal.SIGKILL)
    code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 1
    assert proc.stderr is not None
    assert b"exited by itself; stopping the others" in await proc.stderr.read()
    await asyncio.sleep(0.5)
    assert not any(alive(p) for p in workers)


async def test_workers_refuse_a_busy_port_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "confmesh.cli", "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}",
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and not out
    assert f"127.0.0.1:{port}" in err.decode() and len(err.decode().strip().splitlines()) == 1, err

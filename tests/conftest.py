"""Shared fixtures: a real etcd for the session, a real confmesh server per test.

Every test gets its own key prefix on the shared etcd, so tests never see
each other's data; ports are picked at run time on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from confmesh.client import AdminClient
from confmesh.server import ConfmeshServer, EmbeddedEtcd, ServerSettings, find_etcd_binary

# Shared 2-core machines are noisy: no per-example deadline, no "too slow" failures.
settings.register_profile("confmesh", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("confmesh")


def etcdctl_binary() -> str:
    import shutil

    found = shutil.which("etcdctl")
    if found:
        return found
    return str(Path(find_etcd_binary()).with_name("etcdctl"))


class EtcdHandle:
    def __init__(self, etcd: EmbeddedEtcd) -> None:
        self.etcd = etcd
        self.endpoint = etcd.endpoint

    def ctl(self, *args: str) -> str:
        env = {**os.environ, "ETCDCTL_API": "3"}
        out = subprocess.run(
            [etcdctl_binary(), f"--endpoints={self.endpoint}", *args],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        return out.stdout


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdHandle]:
    data = tmp_path_factory.mktemp("etcd") / "data"
    embedded = EmbeddedEtcd(data)
    asyncio.run(embedded.start())
    try:
        yield EtcdHandle(embedded)
    finally:
        asyncio.run(embedded.stop())


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def server(etcd: EtcdHandle, prefix: str) -> AsyncIterator[ConfmeshServer]:
    srv = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, heartbeat_interval=1.0
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def admin(server: ConfmeshServer) -> AsyncIterator[AdminClient]:
    async with AdminClient(server.address, actor="tests") as client:
        yield client

"""Helpers for failure tests: private etcds, confmesh servers as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from confmesh.server import EmbeddedEtcd
from confmesh.server.embedded_etcd import free_port


class ServerProcess:
    """`confmesh serve` in its own process, on a port picked at run time."""

    def __init__(self, etcd_endpoints: str, prefix: str, *extra: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "confmesh.cli",
            "serve",
            "--listen",
            self.address,
            "--etcd",
            etcd_endpoints,
            "--prefix",
            prefix,
            "--heartbeat",
            "1",
            *extra,
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ServerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line.startswith(b"confmesh serving on"), line
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


@pytest.fixture
async def servers() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    await asyncio.gather(*(s.stop() for s in started))


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """An etcd of this test's own, which the test may kill and restart."""
    etcd = EmbeddedEtcd(tmp_path / "etcd", extra_args=["--experimental-watch-progress-notify-interval=1s"])
    asyncio.run(etcd.start())
    try:
        yield etcd
    finally:
        if etcd.process is not None and etcd.process.poll() is None:
            os.kill(etcd.process.pid, signal.SIGTERM)
            etcd.process.wait()

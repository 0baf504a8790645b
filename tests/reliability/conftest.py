"""Helpers for failure tests: private etcds, confmesh servers as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from confmesh.server import EmbeddedEtcd
from tests.helpers import ServerProcess


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

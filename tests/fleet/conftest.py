"""Replicas of one confmesh server: in-process servers on one etcd and one prefix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from confmesh.server import ConfmeshServer, ServerSettings
from tests.conftest import EtcdHandle

StartReplicas = Callable[..., Awaitable[list[ConfmeshServer]]]


@pytest.fixture
async def fleet(etcd: EtcdHandle, prefix: str) -> AsyncIterator[StartReplicas]:
    """`await fleet(count, **settings)`: that many more replicas (replica-0, replica-1, ... in the
    order started), all stopped after the test."""
    started: list[ConfmeshServer] = []

    async def start(count: int, **settings: Any) -> list[ConfmeshServer]:
        servers = [
            ConfmeshServer(
                ServerSettings(
                    listen="127.0.0.1:0",
                    etcd_endpoints=[etcd.endpoint],
                    prefix=prefix,
                    server_id=f"replica-{i}",
                    **settings,
                )
            )
            for i in range(len(started), len(started) + count)
        ]
        started.extend(servers)
        await asyncio.gather(*(s.start() for s in servers))
        return servers

    yield start
    await asyncio.gather(*(s.stop() for s in started))

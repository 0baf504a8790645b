"""The synchronous facade, as a threaded (Flask/Django style) app uses it."""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel

from confmesh.client import AdminClient, SyncConfigClient
from confmesh.server import ConfmeshServer


class Settings(BaseModel):
    pool_size: int


async def test_sync_client_follows_changes_from_a_background_thread(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("pool_size", 5, env="prod")

    def threaded_app() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        changed = threading.Event()
        with SyncConfigClient(server.address, environment="prod", service="web", schema=Settings) as client:
            assert client.config.pool_size == 5
            client.on_change(lambda old, new: (seen.append((old.pool_size, new.pool_size)), changed.set()))
            asyncio.run_coroutine_threadsafe(admin_put(8), main_loop).result(5)
            assert changed.wait(5)
            assert client.config.pool_size == 8
            assert client.version > 0 and client.history[-1].version == client.version
        return seen

    async def admin_put(value: int) -> None:
        await admin.put("pool_size", value, env="prod")

    main_loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(threaded_app) == [(5, 8)]

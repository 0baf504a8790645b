"""The source seam's shared half: what a source tells the streams (``ServingState``), the whole
seam a source implements (``Source``), and the wait for a revision they all answer the same way.

Kept apart from the sources themselves so the snapshot plane and the Watch service depend on the
seam only (an import-linter contract), never on etcd or any one source.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from confmesh.server.store import ConfigStore


class ServingState(Protocol):
    """What the streams need to know of a source: whether the store is synced (nothing is served
    before), how fresh it is, and a way to wait until it reaches a client's version."""

    @property
    def stale(self) -> bool: ...
    @property
    def stale_reason(self) -> str: ...
    @property
    def synced(self) -> bool: ...
    @property
    def revision(self) -> int: ...
    async def wait_for_revision(self, revision: int, timeout: float) -> bool: ...


class Source(ServingState, Protocol):
    """Where a store's contents come from (etcd; an upstream confmesh for a relay; memory in tests).

    ``revision`` is the upstream revision the store reflects: versions are upstream revisions, so a
    client resuming with ``known_version`` on another replica or relay is understood. A source lists
    everything at a revision, then applies what changed after it in order, handing each
    ``StoreChange`` on; when it loses its upstream it keeps the last state, says why
    (``stale_reason``), and resumes by listing again.
    """

    def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_synced(self, timeout: float) -> bool: ...


class Progress:
    """Waits for a store to reach a revision (read-your-writes, a resuming client's catch-up)."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self._moved = asyncio.Condition()

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Until the store is synced and at least at `revision`; False on timeout."""
        store = self.store
        try:
            async with asyncio.timeout(timeout), self._moved:
                await self._moved.wait_for(lambda: store.synced and store.revision >= revision)
        except TimeoutError:
            return False
        return True

    async def moved(self) -> None:
        """The store moved: wake the waiters."""
        async with self._moved:
            self._moved.notify_all()


class StoreBacked:
    """The half of the seam every source answers from its store the same way: freshness, sync,
    revision and the waits. A source sets ``stale_reason`` and calls ``_progress.moved()`` after
    each change it applies."""

    def __init__(self, store: ConfigStore, stale_reason: str) -> None:
        self.store = store
        self.stale_reason = stale_reason
        self._progress = Progress(store)
        self._tasks: list[asyncio.Task[None]] = []  # what a source runs, cancelled by `stop`

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def stale(self) -> bool:
        return bool(self.stale_reason)

    @property
    def synced(self) -> bool:
        return self.store.synced

    @property
    def revision(self) -> int:
        return self.store.revision

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the store reflects `revision`; False on timeout."""
        return await self._progress.wait_for(revision, timeout)

    async def wait_synced(self, timeout: float) -> bool:
        return await self.wait_for_revision(0, timeout)


__all__ = ["Progress", "ServingState", "Source", "StoreBacked"]

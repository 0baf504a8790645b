"""Keep a ConfigStore in step with etcd: list at a revision, watch from the next.

Resume policy (why not etcd3aio's): when the watch stream breaks for any
reason (etcd down, network, compaction, cancellation) the source re-lists the
whole prefix and watches from the list revision + 1. A re-list cannot skip an
event, whatever etcd was doing when the link dropped; the cost is one range
read of the config key space per outage. While the source cannot reach etcd
the store keeps its last state and ``stale`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from confmesh.errors import Unavailable
from confmesh.keys import Layer
from confmesh.server.etcd import Etcd
from confmesh.server.store import ConfigStore

log = logging.getLogger(__name__)


class EtcdSource:
    def __init__(
        self,
        etcd: Etcd,
        store: ConfigStore,
        on_change: Callable[[set[Layer]], None],
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.etcd = etcd
        self.store = store
        self.on_change = on_change
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stale_reason: str = "not yet synced with etcd"
        self.relists = 0
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def stale(self) -> bool:
        return bool(self.stale_reason)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="confmesh-etcd-source")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the store reflects `revision`; False on timeout."""
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self.store.synced and self.store.revision >= revision)
        except TimeoutError:
            return False
        return True

    async def wait_synced(self, timeout: float) -> bool:
        return await self.wait_for_revision(0, timeout)

    async def _notify(self, changed: set[Layer]) -> None:
        if changed:
            self.on_change(changed)
        async with self._progress:
            self._progress.notify_all()

    async def _run(self) -> None:
        backoff = self.backoff_initial
        prefix = self.store.layout.prefix + "/"
        while True:
            try:
                revision, kvs = await self.etcd.list_prefix(prefix)
                changed = self.store.replace(kvs, revision)
                self.relists += 1
                if self.stale_reason:
                    log.info("synced with etcd at revision %d (%d keys)", revision, len(kvs))
                self.stale_reason = ""
                await self._notify(changed)
                backoff = self.backoff_initial
                async for batch in self.etcd.watch(prefix, revision + 1):
                    if batch.compact_revision or batch.canceled:
                        log.warning(
                            "etcd watch cancelled (compact_revision=%d, reason=%r); re-listing",
                            batch.compact_revision,
                            batch.cancel_reason,
                        )
                        break
                    if batch.events:
                        await self._notify(self.store.apply(batch.events))
            except Unavailable as exc:
                if not self.stale_reason:
                    log.warning("lost etcd: %s; serving the last known state", exc.message)
                self.stale_reason = exc.message
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.backoff_max)

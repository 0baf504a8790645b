"""Sources: what keeps a ConfigStore in step with where config lives, behind one seam (``Source``).

The seam is ``confmesh.server.serving.Source``. A source lists everything at a revision
(``store.replace``), then applies what changed after it in
order (``store.apply``), and hands each resulting ``StoreChange`` on (to the snapshot plane). When
it loses its upstream it keeps the last state, says why (``stale_reason``), and resumes by listing
again. ``EtcdSource`` is the first; a relay's upstream confmesh is the second.

EtcdSource: list at a revision, watch from the next.

Resume policy (why not etcd3aio's): when the watch breaks for any reason
(etcd down, network, compaction, cancellation) the source re-lists the whole
prefix and watches from the list revision + 1. A re-list cannot skip an
event, whatever etcd was doing when the link dropped; the cost is one range
read of the config key space per outage. While the source cannot reach etcd
the store keeps its last state and ``stale`` says why.

Push is backed by reconcile:

* the watch asks etcd for a progress notification every `progress_interval`
  seconds; a watch that delivers nothing at all for `watch_idle_timeout`
  seconds is presumed hung and replaced (re-list);
* every `resync_interval` seconds the store is compared with etcd read at
  the store's own revision; any difference (an event lost on the way)
  triggers a re-list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from confmesh.errors import Unavailable
from confmesh.server.etcd import Etcd
from confmesh.server.serving import StoreBacked
from confmesh.server.store import ConfigStore, StoreChange

log = logging.getLogger(__name__)


class EtcdSource(StoreBacked):
    def __init__(
        self,
        etcd: Etcd,
        store: ConfigStore,
        on_change: Callable[[StoreChange], None],
        *,
        on_stale_change: Callable[[bool], None] | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        progress_interval: float = 30.0,
        watch_idle_timeout: float = 120.0,
        resync_interval: float = 300.0,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.etcd = etcd
        super().__init__(store, "not yet synced with etcd")
        self.on_change = on_change
        self.on_stale_change = on_stale_change
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.progress_interval = progress_interval
        self.watch_idle_timeout = watch_idle_timeout
        self.resync_interval = resync_interval
        self.relists = 0
        self.divergences = 0
        self.last_watch_activity = time.monotonic()
        self.on_error = on_error
        self._relist = asyncio.Event()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="confmesh-etcd-source"),
            asyncio.create_task(self._resync_loop(), name="confmesh-etcd-resync"),
        ]

    def watch_idle_seconds(self) -> float:
        return time.monotonic() - self.last_watch_activity

    def request_relist(self, why: str) -> None:
        log.warning("re-listing etcd: %s", why)
        self._relist.set()

    def _set_stale(self, reason: str) -> None:
        was = self.stale
        self.stale_reason = reason
        if was != self.stale and self.on_stale_change is not None:
            self.on_stale_change(self.stale)

    async def _notify(self, changed: StoreChange) -> None:
        if changed:
            self.on_change(changed)
        await self._progress.moved()

    async def _consume(self, prefix: str, revision: int) -> None:
        """Apply watch batches until the watch must be replaced (returns) or breaks (raises)."""
        stream = self.etcd.watch(prefix, revision + 1, progress_interval=self.progress_interval)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.watch_idle_timeout):
                        batch = await anext(stream)
                    self.last_watch_activity = time.monotonic()
                except TimeoutError:
                    log.warning("etcd watch silent for %.0fs; replacing it", self.watch_idle_timeout)
                    return
                if batch.compact_revision or batch.canceled:
                    log.warning(
                        "etcd watch cancelled (compact_revision=%d, reason=%r); re-listing",
                        batch.compact_revision,
                        batch.cancel_reason,
                    )
                    return
                events = batch.events
                if events:
                    await self._notify(self.store.apply(events))
        finally:
            await stream.aclose()

    async def _run(self) -> None:
        backoff = self.backoff_initial
        prefix = self.store.layout.prefix + "/"
        while True:
            try:
                revision, kvs = await self.etcd.list_prefix(prefix)
                changed = self.store.replace(kvs, revision)
                self.relists += 1
                self._relist.clear()
                if self.stale_reason:
                    log.info("synced with etcd at revision %d (%d keys)", revision, len(kvs))
                self._set_stale("")
                await self._notify(changed)
                backoff = self.backoff_initial
                watch = asyncio.create_task(self._consume(prefix, revision))
                relist = asyncio.create_task(self._relist.wait())
                try:
                    done, _ = await asyncio.wait({watch, relist}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (watch, relist):
                        task.cancel()
                    for task in (watch, relist):
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if watch in done and watch.exception() is not None:
                    raise watch.exception()  # type: ignore[misc]
            except Unavailable as exc:
                if self.on_error is not None:
                    self.on_error()
                if not self.stale_reason:
                    log.warning("lost etcd: %s; serving the last known state", exc.message)
                self._set_stale(exc.message)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.backoff_max)
            except Exception as exc:  # a bug must not stop the server's view of etcd silently
                log.exception("failed to apply etcd's state; re-listing")
                self._set_stale(f"internal error applying etcd's state ({type(exc).__name__}); see the log")
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.backoff_max)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval * random.uniform(0.9, 1.1))
            if self.stale or not self.store.synced:
                continue
            try:
                await self.check_consistency()
            except Unavailable:
                continue

    async def check_consistency(self, catch_up_grace: float = 5.0) -> bool:
        """Re-list when the store has fallen behind etcd or differs from it.

        Behind: etcd holds a modification under the prefix newer than the
        store reached, and the watch does not deliver it within the grace
        period. Different: etcd read at the store's own revision does not
        match the store.
        """
        prefix = self.store.layout.prefix + "/"
        newest = await self.etcd.newest_mod_revision(prefix)
        if newest > self.store.revision and not await self.wait_for_revision(newest, catch_up_grace):
            self.divergences += 1
            self.request_relist(
                f"the watch never delivered revision {newest} (store at {self.store.revision})"
            )
            return False
        revision = self.store.revision
        try:
            _, kvs = await self.etcd.list_prefix(prefix, revision)
        except Unavailable as exc:
            if "compacted" in exc.message:
                return True  # the watch will hear about it; nothing to compare against
            raise
        expected = ConfigStore(self.store.layout)
        expected.replace(kvs, revision)
        if self.store.revision != revision:
            return True  # moved on while we read; compare next time
        diverged = [
            layer
            for layer in set(expected.layers()) | set(self.store.layers())
            if dict(expected.raw_entries(layer)) != dict(self.store.raw_entries(layer))
        ]
        if diverged:
            self.divergences += 1
            self.request_relist(
                f"store diverged from etcd at revision {revision} in "
                + ", ".join(str(layer) for layer in sorted(diverged))
            )
            return False
        return True


__all__ = ["EtcdSource"]

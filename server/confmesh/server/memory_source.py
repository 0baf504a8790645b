"""A source held in memory: the ``Source`` seam's reference implementation, with no etcd.

It keeps a key space with revisions the way etcd does (one revision per write, mod revisions per
key, deletes that leave none behind) and feeds a store and its listener exactly as ``EtcdSource``
does: one full list when it starts (or is told to re-list), then each write as a change. Tests of
the Watch protocol run on it; a relay's upstream source follows the same contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from confmesh.server.kv import Event, KeyValue
from confmesh.server.serving import StoreBacked
from confmesh.server.store import ConfigStore, StoreChange


class MemorySource(StoreBacked):
    def __init__(
        self,
        store: ConfigStore,
        on_change: Callable[[StoreChange], None],
        *,
        on_stale_change: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(store, "not started")
        self.on_change = on_change
        self.on_stale_change = on_stale_change
        self._revision = 0
        self._keys: dict[str, KeyValue] = {}
        self._started = False
        self._notifying: set[asyncio.Task[None]] = set()

    # -- the Source seam -----------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self.stale_reason = ""
        self.relist()

    async def stop(self) -> None:
        self._started = False

    # -- the key space -------------------------------------------------------------------------

    def put(self, key: str, value: bytes) -> int:
        """Write one key; returns the new revision."""
        return self.write({key: value})

    def delete(self, key: str) -> int:
        return self.write({key: None})

    def write(self, changes: Mapping[str, bytes | None]) -> int:
        """One transaction: every key put (or deleted, for None) at one new revision."""
        self._revision += 1
        events = []
        for key, value in changes.items():
            if value is None:
                if self._keys.pop(key, None) is None:
                    continue
                events.append(Event(True, key, b"", self._revision))
            else:
                self._keys[key] = KeyValue(key, value, self._revision)
                events.append(Event(False, key, value, self._revision))
        if self._started and not self.stale:
            self._hand_on(self.store.apply(events))
        return self._revision

    def relist(self) -> None:
        """List everything at the current revision, as a source does after an outage."""
        self._hand_on(self.store.replace(list(self._keys.values()), self._revision))

    def set_stale(self, reason: str) -> None:
        """Lose (reason) or regain ("": re-listing) the upstream; writes meanwhile are seen at the
        re-list, as after an etcd outage."""
        was, self.stale_reason = self.stale, reason
        if was != self.stale and self.on_stale_change is not None:
            self.on_stale_change(self.stale)
        if not reason and self._started:
            self.relist()

    def _hand_on(self, change: StoreChange) -> None:
        if change:
            self.on_change(change)
        task = asyncio.get_event_loop().create_task(self._progress.moved())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)


__all__ = ["MemorySource"]

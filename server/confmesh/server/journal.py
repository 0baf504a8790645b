"""What a server can hand on to relays: the carryable part of its key space as raw keys, and the
recent events, so a relay that reconnects resumes from the revision it holds instead of re-listing.

The store feeds it (``ConfigStore.journal``) with every list and event batch it applies, in order;
``confmesh.server.mirror`` reads it. Only config, flag, layer-marker, schema and rollout keys are
kept: tokens, change requests, fleet and usage documents and audit records never leave a server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from confmesh.keys import KeyLayout
from confmesh.server.kv import Event, KeyValue

MAX_EVENTS = 50_000
MAX_EVENT_BYTES = 64 * 1024 * 1024


class KeyJournal:
    def __init__(
        self, layout: KeyLayout, *, max_events: int = MAX_EVENTS, max_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        self.roots = (
            layout.config_root,
            layout.flags_root,
            layout.marker_root,
            layout.schema_root,
            layout.rollout_root,
        )
        self.keys: dict[str, KeyValue] = {}
        self.revision = 0
        # Every event after `resumable_from` is in `events`: a relay at that revision or later resumes.
        self.resumable_from = 0
        self.events: deque[Event] = deque()
        self._bytes = 0
        self.max_events, self.max_bytes = max_events, max_bytes
        self.listened = False
        # Called after each list ("list") or batch ("events", with the carryable events).
        self._listeners: set[Callable[[str, list[Event]], None]] = set()

    def carryable(self, key: str) -> bool:
        return key.startswith(self.roots)

    def listed(self, kvs: Iterable[KeyValue], revision: int) -> None:
        self.keys = {kv.key: kv for kv in kvs if self.carryable(kv.key)}
        self.revision = max(self.revision, revision)
        self.resumable_from = self.revision
        self.events.clear()
        self._bytes = 0
        self.listened = True
        self._tell("list", [])

    def applied(self, events: Iterable[Event]) -> None:
        kept = []
        for ev in events:
            self.revision = max(self.revision, ev.mod_revision)
            if not self.carryable(ev.key):
                continue
            if ev.deleted:
                self.keys.pop(ev.key, None)
            else:
                self.keys[ev.key] = KeyValue(ev.key, ev.value, ev.mod_revision)
            kept.append(ev)
            self.events.append(ev)
            self._bytes += len(ev.key) + len(ev.value)
        while self.events and (len(self.events) > self.max_events or self._bytes > self.max_bytes):
            gone = self.events.popleft()
            self._bytes -= len(gone.key) + len(gone.value)
            self.resumable_from = max(self.resumable_from, gone.mod_revision)
        self._tell("events", kept)

    def since(self, revision: int) -> list[Event] | None:
        """The carryable events after `revision`, or None when they are no longer all held."""
        if not self.listened or revision < self.resumable_from or revision > self.revision:
            return None
        return [ev for ev in self.events if ev.mod_revision > revision]

    def listen(self, listener: Callable[[str, list[Event]], None]) -> None:
        self._listeners.add(listener)

    def unlisten(self, listener: Callable[[str, list[Event]], None]) -> None:
        self._listeners.discard(listener)

    def _tell(self, what: str, events: list[Event]) -> None:
        for listener in list(self._listeners):
            listener(what, events)


__all__ = ["KeyJournal"]

"""Fan-out of snapshots to Watch subscribers.

Each subscriber has a one-slot mailbox: a newer snapshot replaces one that has
not been sent yet, so a slow client costs one pending snapshot of memory and
never delays the others (publishing never awaits a stream).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from confmesh.delta import Update
from confmesh.keys import Scope
from confmesh.server.resolver import Resolved, Resolver, VersionHash

SENT_MEMORY = 64

_ids = itertools.count(1)

log = logging.getLogger(__name__)


class Subscriber:
    __slots__ = (
        "accept_delta",
        "base",
        "caller",
        "created",
        "error",
        "heartbeat_now",
        "id",
        "instance_id",
        "last_offered",
        "legacy",
        "nacked",
        "pending",
        "scope",
        "sent",
        "wakeup",
    )  # fmt: skip

    def __init__(
        self,
        scope: Scope,
        known_version: int,
        known_hash: str,
        instance_id: str = "",
        *,
        legacy: bool = False,
    ) -> None:
        self.id = next(_ids)
        # The client checks leafsum256 hashes only: every hash on this stream is one, and no deltas.
        self.legacy = legacy
        self.scope = scope
        self.instance_id = instance_id
        self.pending: Resolved | None = None
        self.wakeup = asyncio.Event()
        self.last_offered: tuple[int, str] = (known_version, known_hash)
        # Versions sent on this stream, so an ACK/NACK can be checked.
        self.sent: OrderedDict[int, str] = OrderedDict()
        self.nacked: set[int] = set()
        self.error: tuple[str, str] | None = None
        self.heartbeat_now = False
        self.created = time.time()
        # Deltas: whether the client takes them, and the version it runs (None: unknown).
        self.accept_delta = False
        self.base: tuple[int, str] | None = (known_version, known_hash) if known_version > 0 else None
        self.caller: Any = None  # access.Caller, set by the servicer

    def offer(self, snapshot: Resolved) -> None:
        offered = (snapshot.version, snapshot.hash_for(self.legacy))
        if offered == self.last_offered:
            return
        if offered[1] == self.last_offered[1] and snapshot.version <= self.last_offered[0]:
            return
        self.last_offered = offered
        self.pending = snapshot
        self.wakeup.set()

    def resend_if_behind(self, current: Resolved, version: int, hash_: str) -> bool:
        """The client says it runs (version, hash): offer `current` again if that differs.

        A version this stream NACKed is never re-sent; the next change will be.
        """
        if (version, hash_) == (
            current.version,
            current.hash_for(self.legacy),
        ) or current.version in self.nacked:
            return False
        if self.pending is not None:
            return False
        self.last_offered = (version, hash_)
        if self.base is not None:
            self.base = (version, hash_)
        self.offer(current)
        return True

    def delta_base(self) -> tuple[int, str] | None:
        """What the snapshot being sent may be a delta from: the version the client runs, if known."""
        return self.base if self.accept_delta and not self.legacy else None

    def ping(self) -> None:
        self.heartbeat_now = True
        self.wakeup.set()

    def take(self) -> Resolved | None:
        snapshot, self.pending = self.pending, None
        if snapshot is not None:
            self.sent[snapshot.version] = snapshot.hash_for(self.legacy)
            while len(self.sent) > SENT_MEMORY:
                self.sent.popitem(last=False)
        return snapshot

    def fail(self, code: str, message: str) -> None:
        self.error = (code, message)
        self.wakeup.set()


class Hub:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._by_scope: dict[Scope, set[Subscriber]] = {}

    def add(self, sub: Subscriber) -> None:
        self._by_scope.setdefault(sub.scope, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        subs = self._by_scope.get(sub.scope)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_scope[sub.scope]
                self.resolver.forget(sub.scope)

    def publish(self, scopes: Iterable[Scope] | None = None) -> None:
        """Offer the current snapshot of `scopes` (default: all) to their subscribers."""
        targets = list(self._by_scope) if scopes is None else [s for s in scopes if s in self._by_scope]
        for scope in targets:
            try:
                for sub in self._by_scope[scope]:
                    sub.offer(self.resolver.for_instance(scope, sub.instance_id))
            except Exception:  # one scope that cannot resolve never holds back the others
                log.exception("cannot resolve %s; its streams keep the snapshot they have", scope)

    def ping_all(self) -> None:
        """Send every subscriber a heartbeat now (staleness changed)."""
        for subs in self._by_scope.values():
            for sub in subs:
                sub.ping()

    def subscribers(self) -> list[Subscriber]:
        return [sub for subs in self._by_scope.values() for sub in subs]

    # What a stream is offered, from the resolver: the Watch service asks the hub, not the resolver.

    def snapshot(self, scope: Scope) -> Resolved:
        return self.resolver.snapshot(scope)

    def for_instance(self, scope: Scope, instance_id: str) -> Resolved:
        return self.resolver.for_instance(scope, instance_id)

    def delta(self, base: VersionHash, target: Resolved) -> list[Update] | None:
        return self.resolver.delta(base, target)

    def scopes(self) -> list[Scope]:
        return list(self._by_scope)

    def count(self) -> int:
        return sum(len(s) for s in self._by_scope.values())

"""The snapshot plane: the one owner of "the source changed → re-resolve → publish".

A source (etcd today, an upstream confmesh for a relay) applies what it hears to the store and
hands the resulting ``StoreChange`` to ``SnapshotPlane.apply``; nothing else writes the resolver or
offers snapshots to streams. It is the cache in go-control-plane's sense: readers ask it for a
scope's snapshot, the Watch service subscribes streams to it through a narrow seam (``subscribe``,
``unsubscribe``, ``current``, ``delta``), and listeners hear each change once, in one shape.

Publishing never awaits a stream: each receiver has a one-slot mailbox (``watch_stream``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from confmesh.delta import Update
from confmesh.keys import Scope
from confmesh.server.resolver import Resolved, Resolver, VersionHash, affects
from confmesh.server.store import ConfigStore, StoreChange

log = logging.getLogger(__name__)


class Receiver(Protocol):
    """What the plane needs of a subscribed stream."""

    @property
    def scope(self) -> Scope: ...
    @property
    def instance_id(self) -> str: ...
    def offer(self, snapshot: Resolved) -> None: ...
    def ping(self) -> None: ...


class SnapshotPlane:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self._resolver = Resolver(store)
        self._receivers: dict[Scope, set[Receiver]] = {}
        self._listeners: list[Callable[[StoreChange], None]] = []

    # -- the writing side: sources -------------------------------------------------------------

    def apply(self, change: StoreChange) -> None:
        """The store moved by `change`: re-resolve what it touches, offer the new snapshots to the
        streams of those scopes, then tell the listeners (flagd sync, access, ...)."""
        if change.layers or change.scopes:
            layers = list(change.layers)
            resolved = {*self._resolver.scopes(), *self._receivers}
            touched = {s for s in resolved if any(affects(layer, s) for layer in layers)}
            self._resolver.update(change.layers, touched)
            for scope in change.scopes:
                self._resolver.forget(scope)
            self._publish(touched | change.scopes)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # one listener's failure never holds back delivery or the others
                log.exception("a listener of store changes failed")

    def listen(self, listener: Callable[[StoreChange], None]) -> None:
        self._listeners.append(listener)

    def ping_all(self) -> None:
        """A heartbeat to every stream now (the source's staleness changed)."""
        for receivers in self._receivers.values():
            for receiver in receivers:
                receiver.ping()

    def _publish(self, scopes: Iterable[Scope]) -> None:
        resolver = self._resolver
        for scope in scopes:
            receivers = self._receivers.get(scope)
            if not receivers:
                continue
            try:
                if resolver.has_rollout(scope):
                    for receiver in receivers:
                        receiver.offer(resolver.for_instance(scope, receiver.instance_id))
                else:
                    snapshot = resolver.snapshot(scope)  # one for every stream of the scope
                    for receiver in receivers:
                        receiver.offer(snapshot)
            except Exception:  # one scope that cannot resolve never holds back the others
                log.exception("cannot resolve %s; its streams keep the snapshot they have", scope)

    # -- the Watch seam ------------------------------------------------------------------------

    def subscribe(self, receiver: Receiver) -> None:
        """Add a stream and offer it its scope's current snapshot."""
        self._receivers.setdefault(receiver.scope, set()).add(receiver)
        self._publish([receiver.scope])

    def unsubscribe(self, receiver: Receiver) -> None:
        receivers = self._receivers.get(receiver.scope)
        if receivers is not None:
            receivers.discard(receiver)
            if not receivers:
                del self._receivers[receiver.scope]
                self._resolver.forget(receiver.scope)

    def current(self, scope: Scope, instance_id: str | None = None) -> Resolved:
        """What an instance of `scope` gets now (a canary snapshot if a rollout includes it);
        without `instance_id`, the scope's own snapshot."""
        if instance_id is None:
            return self._resolver.snapshot(scope)
        return self._resolver.for_instance(scope, instance_id)

    def delta(self, base: VersionHash, target: Resolved) -> list[Update] | None:
        return self._resolver.delta(base, target)

    # -- readers -------------------------------------------------------------------------------

    def canary(self, scope: Scope) -> Resolved:
        """The snapshot a rollout's canary instances of `scope` get (the scope must have one)."""
        return self._resolver.canary(scope)

    @property
    def violations(self) -> dict[Scope, str]:
        """Scopes whose current config breaks their schema (evaluated when resolved), and why."""
        return self._resolver.violations

    def scopes(self) -> list[Scope]:
        """The scopes with open streams."""
        return list(self._receivers)

    def count(self) -> int:
        return sum(len(r) for r in self._receivers.values())


__all__ = ["Receiver", "SnapshotPlane"]

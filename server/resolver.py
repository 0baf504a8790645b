"""Resolve scopes into versioned, hashed snapshots (cached, pure)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, resolve, snapshot_hash
from confmesh.server.store import ConfigStore


@dataclass(frozen=True)
class Resolved:
    scope: Scope
    version: int
    hash: str
    config: dict[str, JSONValue]
    flags: dict[str, JSONValue]
    resolved_at: float
    # traceparent of the admin write that made this version ("" when untraced).
    trace_parent: str = ""


def affects(layer: Layer, scope: Scope) -> bool:
    if layer.kind is LayerKind.DEFAULTS:
        return True
    if layer.kind in (LayerKind.ENVIRONMENT, LayerKind.FLAGS):
        return layer.environment == scope.environment
    return layer.environment == scope.environment and layer.service == scope.service


class Resolver:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self._cache: dict[Scope, Resolved] = {}

    def snapshot(self, scope: Scope) -> Resolved:
        cached = self._cache.get(scope)
        if cached is not None:
            return cached
        config = resolve(self.store.entries(layer) for layer in scope.layers)
        flags = self.store.entries(scope.flag_layer)
        version = self.store.scope_version(scope)
        resolved = Resolved(
            scope=scope,
            version=version,
            hash=snapshot_hash(config, flags),
            config=config,
            flags=flags,
            resolved_at=time.time(),
            trace_parent=self.store.scope_trace(scope, version),
        )
        self._cache[scope] = resolved
        return resolved

    def invalidate(self, layers: Iterable[Layer]) -> None:
        layers = list(layers)
        for scope in [s for s in self._cache if any(affects(layer, s) for layer in layers)]:
            del self._cache[scope]

    def forget(self, scope: Scope) -> None:
        self._cache.pop(scope, None)

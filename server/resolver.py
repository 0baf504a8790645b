"""Resolve scopes into versioned, hashed snapshots (cached, pure)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, resolve, snapshot_hash
from confmesh.server.store import ConfigStore

log = logging.getLogger(__name__)


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
        # Scopes whose current config breaks their registered schema: the reason, and the
        # last valid snapshot served instead (out-of-band writes bypass write-time checks).
        self.violations: dict[Scope, str] = {}
        self._last_valid: dict[Scope, Resolved] = {}
        # Snapshots with an active rollout's changes on top, for the canary instances.
        self._canary: dict[Scope, Resolved] = {}

    def for_instance(self, scope: Scope, instance_id: str) -> Resolved:
        """What `instance_id` gets: the canary snapshot if a rollout includes it, else the scope's."""
        entry = self.store.rollouts.get(scope)
        if entry is not None and entry[0].includes(instance_id):
            return self.canary(scope)
        return self.snapshot(scope)

    def canary(self, scope: Scope) -> Resolved:
        cached = self._canary.get(scope)
        if cached is not None:
            return cached
        base = self.snapshot(scope)
        rollout, _ = self.store.rollouts[scope]
        entries = [self.store.entries(layer) for layer in scope.layers]
        entries[-1] = rollout.apply_to(entries[-1])
        config = resolve(entries)
        resolved = Resolved(scope, base.version, snapshot_hash(config, base.flags), config, base.flags,
                            time.time(), base.trace_parent)  # fmt: skip
        self._canary[scope] = resolved
        return resolved

    def snapshot(self, scope: Scope) -> Resolved:
        cached = self._cache.get(scope)
        if cached is not None:
            return cached
        resolved = self._resolve(scope)
        schema = self.store.schemas.get(scope)
        issues = schema.issues(resolved.config) if schema is not None else []
        if issues:
            first = issues[0]
            self.violations[scope] = (
                f"version {resolved.version} breaks the schema: {first.path}: {first.message}"
            )
            log.error("not serving %s: %s", scope, self.violations[scope])
            last = self._last_valid.get(scope)
            if last is not None:
                # The last valid config, with the current flags: a kill switch still gets through.
                flags = resolved.flags
                version = max(last.version, self.store.layer_revision(scope.flag_layer))
                resolved = Resolved(scope, version, snapshot_hash(last.config, flags), last.config, flags,
                                    time.time(), self.store.scope_trace(scope, version))  # fmt: skip
        else:
            self.violations.pop(scope, None)
            self._last_valid[scope] = resolved
        self._cache[scope] = resolved
        return resolved

    def _resolve(self, scope: Scope) -> Resolved:
        config = resolve(self.store.entries(layer) for layer in scope.layers)
        flags = self.store.entries(scope.flag_layer)
        version = self.store.scope_version(scope)
        rollout = self.store.rollouts.get(scope)
        if rollout is not None:
            version = max(version, rollout[1])  # a rollout's start, step or abort is a new version
        resolved = Resolved(
            scope=scope,
            version=version,
            hash=snapshot_hash(config, flags),
            config=config,
            flags=flags,
            resolved_at=time.time(),
            trace_parent=self.store.scope_trace(scope, version),
        )
        return resolved

    def invalidate(self, layers: Iterable[Layer]) -> None:
        layers = list(layers)
        for scope in [s for s in self._cache if any(affects(layer, s) for layer in layers)]:
            del self._cache[scope]
        for scope in [s for s in self._canary if any(affects(layer, s) for layer in layers)]:
            del self._canary[scope]

    def forget(self, scope: Scope) -> None:
        self._cache.pop(scope, None)
        self._canary.pop(scope, None)

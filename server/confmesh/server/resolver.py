"""Resolve scopes into versioned, hashed snapshots (cached, patched incrementally, pure).

A scope is resolved in full once; after that each change patches the subtrees
it touches (confmesh.delta), so a one-key change costs the same whatever the
size of the config. Each patched snapshot remembers its parent and the paths
that changed, which is what a delta to a client running an older version is
built from.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

from confmesh.delta import (
    CONFIG,
    FLAGS,
    MISSING,
    Path,
    Update,
    apply_updates,
    change_roots,
    get_path,
    minimal_paths,
    resolve_at,
)
from confmesh.digest import LEAFSUM, format_hash, snapshot_digest, snapshot_hash
from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, resolve
from confmesh.server.record_kinds import ROLLOUTS, SCHEMAS
from confmesh.server.store import Changes, ConfigStore

log = logging.getLogger(__name__)

# How many changes back a client may be and still get a delta instead of a full snapshot.
LINEAGE = 64

VersionHash = tuple[int, str]
# A patched version's parent, and the (section, path)s the patch replaced.
Link = tuple[VersionHash, tuple[tuple[str, Path], ...]]


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
    # The hash as a number (confmesh.digest), which patches update.
    digest: int = 0

    @property
    def key(self) -> VersionHash:
        return self.version, self.hash

    @cached_property
    def legacy_hash(self) -> str:
        """The leafsum256 hash, for clients that know no other (computed in full, once, on demand)."""
        return snapshot_hash(self.config, self.flags, LEAFSUM)

    def hash_for(self, legacy: bool) -> str:
        return self.legacy_hash if legacy else self.hash


def affects(layer: Layer, scope: Scope) -> bool:
    if layer.kind is LayerKind.DEFAULTS:
        return True
    if layer.kind in (LayerKind.ENVIRONMENT, LayerKind.FLAGS):
        return layer.environment == scope.environment
    return layer.environment == scope.environment and layer.service == scope.service


class Resolver:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        # Each scope's resolution of its layers (schemas not applied), patched on every change.
        self._docs: dict[Scope, Resolved] = {}
        # Per scope, how each of its recent versions was patched from its parent.
        self._lineage: dict[Scope, OrderedDict[VersionHash, Link]] = {}
        # What each scope serves: its doc, or the last valid one while the doc breaks its schema.
        self._cache: dict[Scope, Resolved] = {}
        # Scopes whose current config breaks their registered schema: the reason, and the
        # last valid snapshot served instead (out-of-band writes bypass write-time checks).
        self.violations: dict[Scope, str] = {}
        self._last_valid: dict[Scope, Resolved] = {}
        # Snapshots with an active rollout's changes on top, for the canary instances.
        self._canary: dict[Scope, Resolved] = {}

    def has_rollout(self, scope: Scope) -> bool:
        """Whether an active rollout may give some instances of `scope` a canary snapshot."""
        entry = self.store.records(ROLLOUTS).get(scope)
        return entry is not None and entry[0].active

    def for_instance(self, scope: Scope, instance_id: str) -> Resolved:
        """What `instance_id` gets: the canary snapshot if a rollout includes it, else the scope's."""
        entry = self.store.records(ROLLOUTS).get(scope)
        if entry is not None and entry[0].includes(instance_id):
            return self.canary(scope)
        return self.snapshot(scope)

    def canary(self, scope: Scope) -> Resolved:
        cached = self._canary.get(scope)
        if cached is not None:
            return cached
        base = self.snapshot(scope)
        rollout, _ = self.store.records(ROLLOUTS)[scope]
        entries = [self.store.entries(layer) for layer in scope.layers]
        entries[-1] = rollout.apply_to(entries[-1])
        config = resolve(entries)
        digest = snapshot_digest(config, base.flags)
        resolved = Resolved(scope, base.version, format_hash(digest), config, base.flags,
                            time.time(), base.trace_parent, digest)  # fmt: skip
        self._canary[scope] = resolved
        return resolved

    def snapshot(self, scope: Scope) -> Resolved:
        cached = self._cache.get(scope)
        if cached is not None:
            return cached
        resolved = self._docs.get(scope)
        if resolved is None:
            resolved = self._docs[scope] = self._resolve(scope)
        schema = self.store.records(SCHEMAS).get(scope)
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
                digest = snapshot_digest(last.config, flags)
                resolved = Resolved(scope, version, format_hash(digest), last.config, flags,
                                    time.time(), self.store.scope_trace(scope, version), digest)  # fmt: skip
        else:
            self.violations.pop(scope, None)
            self._last_valid[scope] = resolved
        self._cache[scope] = resolved
        return resolved

    def _version(self, scope: Scope) -> int:
        version = self.store.scope_version(scope)
        rollout = self.store.records(ROLLOUTS).get(scope)
        if rollout is not None:
            version = max(version, rollout[1])  # a rollout's start, step or abort is a new version
        return version

    def _resolve(self, scope: Scope) -> Resolved:
        config = resolve(self.store.entries(layer) for layer in scope.layers)
        flags = self.store.entries(scope.flag_layer)
        version = self._version(scope)
        digest = snapshot_digest(config, flags)
        return Resolved(scope, version, format_hash(digest), config, flags, time.time(),
                        self.store.scope_trace(scope, version), digest)  # fmt: skip

    def _patch(self, old: Resolved, changes: Changes) -> Resolved:
        """`old` with the subtrees `changes` touch re-resolved from the store."""
        scope = old.scope
        views = [self.store.view(layer) for layer in scope.layers]
        config_keys = {key for layer in scope.layers for key in changes.get(layer, ())}
        updates = [Update(CONFIG, root, resolve_at(views, root)) for root in change_roots(views, config_keys)]
        flags = self.store.view(scope.flag_layer)
        updates += [
            Update(FLAGS, (key,), flags.get(key, MISSING))
            for key in sorted(changes.get(scope.flag_layer, ()))
        ]
        config, flag_doc, digest = apply_updates(old.config, old.flags, old.digest, updates)
        version = self._version(scope)
        new = Resolved(scope, version, format_hash(digest), config, flag_doc, time.time(),
                       self.store.scope_trace(scope, version), digest)  # fmt: skip
        if new.key != old.key:
            lineage = self._lineage.setdefault(scope, OrderedDict())
            lineage[new.key] = (old.key, tuple((u.section, u.path) for u in updates))
            while len(lineage) > LINEAGE:
                lineage.popitem(last=False)
        return new

    def delta(self, base: VersionHash, target: Resolved) -> list[Update] | None:
        """The updates that turn the snapshot `base` into `target`, or None if not known."""
        lineage = self._lineage.get(target.scope)
        if lineage is None:
            return None
        touched: dict[str, list[Path]] = {CONFIG: [], FLAGS: []}
        key = target.key
        while key != base:
            link = lineage.get(key)
            if link is None:
                return None
            key, paths = link
            for section, path in paths:
                touched[section].append(path)
        docs = {CONFIG: target.config, FLAGS: target.flags}
        return [
            Update(section, path, get_path(docs[section], path))
            for section, paths in touched.items()
            for path in minimal_paths(paths)
        ]

    def scopes(self) -> set[Scope]:
        """The scopes resolved and kept (patched on every change)."""
        return self._docs.keys() | self._canary.keys()

    def update(self, changes: Changes, touched: set[Scope]) -> None:
        """Bring the resolved scopes up to date with `changes`, which touch the scopes `touched`
        (the caller decides which once; scopes not resolved here are ignored)."""
        for scope in touched:
            self._cache.pop(scope, None)
            self._canary.pop(scope, None)
            doc = self._docs.get(scope)
            if doc is None:
                continue
            try:
                self._docs[scope] = self._patch(doc, changes)
            except Exception:  # one scope's failure is that scope's alone: it resolves afresh when asked
                log.exception("cannot patch the snapshot of %s; dropping it", scope)
                self.forget(scope)

    def forget(self, scope: Scope) -> None:
        self._docs.pop(scope, None)
        self._lineage.pop(scope, None)
        self._cache.pop(scope, None)
        self._canary.pop(scope, None)

"""What a client does with a snapshot, decided without I/O.

Two pure steps, with the one piece of I/O (reading secret references) between them:

* :func:`examine`: what we run and the snapshot received in; out comes ``Confirm`` (the same
  content: ACK), ``Reject`` (NACK with the reason), ``NeedFull`` (a delta we cannot apply here)
  or the ``Content`` the snapshot would have us run.
* :func:`accept`: that content with its secrets resolved in; out comes ``Reject`` (NACK with the
  failing field paths) or the ``Accepted`` typed config and flag evaluator to apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confmesh import errors
from confmesh.client._validation import validate
from confmesh.delta import CONFIG, apply_updates
from confmesh.digest import SCHEMES, format_hash, scheme_of, snapshot_digest
from confmesh.flags import FlagEvaluator, UsageCounter, parse_flag_set, reparse_flag_set
from confmesh.v1 import config_pb2
from confmesh.wire import from_struct, updates_from_pb

log = logging.getLogger("confmesh.client")


@dataclass(frozen=True)
class AppliedSnapshot:
    """One snapshot this client applied."""

    version: int
    hash: str
    raw: Mapping[str, Any]
    config: Any
    flags: FlagEvaluator
    applied_at: float
    # The flag definitions as received, and the snapshot digest: what a delta patches.
    raw_flags: Mapping[str, Any] = field(default_factory=dict)
    digest: int = 0
    # `raw` with its secret references read: a delta re-reads only the top-level keys it touches.
    resolved: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Confirm:
    """The snapshot holds what we run: ACK, apply nothing."""


@dataclass(frozen=True)
class Reject:
    message: str
    issues: list[errors.FieldIssue] = field(default_factory=list)


@dataclass(frozen=True)
class NeedFull:
    """A delta that does not apply to what we run: ask for the whole snapshot."""

    reason: str


@dataclass(frozen=True)
class Content:
    raw: dict[str, Any]
    raw_flags: dict[str, Any]
    digest: int
    # The top-level config keys a delta changed (None: a whole snapshot, everything may differ).
    changed: frozenset[str] | None = None


@dataclass(frozen=True)
class Accepted:
    config: Any
    flags: FlagEvaluator


Seen = Confirm | Reject | NeedFull | Content


def examine(current: AppliedSnapshot | None, snap: config_pb2.Snapshot) -> Seen:
    if current is not None and current.version > 0:
        if snap.hash == current.hash and snap.version <= current.version:
            return Confirm()
        if snap.version < current.version:
            return Reject(f"version {snap.version} is older than the running version {current.version}")
    if snap.HasField("delta"):
        return _patch(current, snap)
    scheme = scheme_of(snap.hash)
    if scheme is None:
        return Reject(f"unknown hash scheme in {snap.hash[:40]!r}; this client checks {', '.join(SCHEMES)}")
    raw, raw_flags = from_struct(snap.config), from_struct(snap.flags)
    digest = snapshot_digest(raw, raw_flags, scheme)
    if format_hash(digest, scheme) != snap.hash:
        return Reject("content does not match its hash; snapshot corrupted in transit")
    return Content(raw, raw_flags, digest)


def _patch(current: AppliedSnapshot | None, snap: config_pb2.Snapshot) -> NeedFull | Content:
    delta = snap.delta
    if current is None or (current.version, current.hash) != (delta.base_version, delta.base_hash):
        running = current.version if current else None
        base = delta.base_version
        return NeedFull(f"delta to version {snap.version} is from version {base}, we run {running}")
    try:
        updates = updates_from_pb(delta.updates)
    except errors.InvalidArgument as exc:
        return NeedFull(f"unusable delta to version {snap.version}: {exc.message}")
    scheme = scheme_of(snap.hash)
    if scheme is None or scheme != scheme_of(current.hash):
        return NeedFull(f"delta to version {snap.version} comes with another hash scheme")
    raw, raw_flags, digest = apply_updates(current.raw, current.raw_flags, current.digest, updates, scheme)
    if format_hash(digest, scheme) != snap.hash:
        return NeedFull(f"delta to version {snap.version} does not give its hash")
    config_paths = [u.path for u in updates if u.section == CONFIG]
    changed = None if any(not p for p in config_paths) else frozenset(str(p[0]) for p in config_paths)
    return Content(raw, raw_flags, digest, changed)


def accept(
    content: Content,
    resolved: Any,
    secret_issues: list[errors.FieldIssue],
    *,
    schema: type[Any] | None,
    current: AppliedSnapshot | None,
    version: int,
    environment: str,
    usage: UsageCounter,
) -> Reject | Accepted:
    """Validate the resolved config against the schema and compile the flags."""
    if secret_issues:
        return Reject("; ".join(str(i) for i in secret_issues), secret_issues)
    try:
        config = validate(
            schema,  # type: ignore[arg-type]
            resolved,
            previous=current.config if current is not None else None,
            changed=content.changed,
        )
    except errors.SnapshotRejected as exc:
        return Reject(exc.message, exc.issues)
    # Only the flag definitions that changed are parsed and compiled again; the others keep
    # their compiled form, which answers with the version their definition arrived in.
    try:
        if current is None:
            flag_set = parse_flag_set(content.raw_flags)
        elif content.raw_flags is current.raw_flags:
            flag_set = current.flags.flag_set
        else:
            flag_set = reparse_flag_set(content.raw_flags, current.raw_flags, current.flags.flag_set)
        flags = FlagEvaluator(
            flag_set,
            version=version,
            environment=environment,
            usage=usage,
            previous=current.flags if current is not None else None,
        )
    except errors.InvalidArgument as exc:
        return Reject(exc.message, [errors.FieldIssue(exc.field, exc.message)])
    return Accepted(config, flags)

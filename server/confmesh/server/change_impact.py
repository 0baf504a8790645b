"""A change's diff and blast radius, against the layers as the replica holds them now.

The blast radius is every known (environment, service) whose resolved config
the change alters, with the keys that change, whether its registered schema
accepts the result, and how many instances run it; and, for flag layers,
which flags change and whether the environment's flag set still validates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.flags.model import parse_flag_set
from confmesh.gitops import flatten
from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, resolve, same_value
from confmesh.server.change_requests import after_changes
from confmesh.server.resolver import affects
from confmesh.server.schemas import ServiceSchema
from confmesh.server.writer import SCHEMA_CHECK_BUDGET, run_on_schema_pool, shown_in_audit

MAX_SCOPES = 200


@dataclass(frozen=True)
class DiffRow:
    layer: Layer
    key: str
    op: str  # put | delete
    old: JSONValue
    new: JSONValue
    existed: bool


@dataclass(frozen=True)
class ScopeRow:
    scope: Scope
    changed_keys: list[str]
    has_schema: bool
    schema_accepts: bool = True
    schema_error: str = ""
    schema_field: str = ""
    instances: int = 0


@dataclass(frozen=True)
class FlagRow:
    environment: str
    changed_flags: list[str]
    valid: bool
    error: str = ""
    instances: int = 0


@dataclass
class Impact:
    diff: list[DiffRow] = field(default_factory=list)
    scopes: list[ScopeRow] = field(default_factory=list)
    flags: list[FlagRow] = field(default_factory=list)
    not_shown: int = 0


def changed_leaves(before: Mapping[str, JSONValue], after: Mapping[str, JSONValue]) -> list[str]:
    a, b = flatten(dict(before)), flatten(dict(after))
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not same_value(a[k], b[k]))


def diff_rows(
    current: Mapping[Layer, Mapping[str, JSONValue]],
    changes: Sequence[ChangeSpec],
    schemas: Mapping[Scope, ServiceSchema],
) -> list[DiffRow]:
    """One row per key written or deleted, old and new values as the audit log would show them."""
    state = {layer: dict(current.get(layer, {})) for layer in {c.layer for c in changes}}
    rows = []
    for change in changes:
        entries = state[change.layer]

        def shown(key: str, value: JSONValue, layer: Layer = change.layer) -> JSONValue:
            return shown_in_audit(schemas, layer, key, value)

        if change.delete:
            nested = change.layer.kind is not LayerKind.FLAGS
            for k in sorted(
                k for k in entries if k == change.key or (nested and k.startswith(change.key + "."))
            ):
                rows.append(DiffRow(change.layer, k, "delete", shown(k, entries.pop(k)), None, True))
        else:
            existed = change.key in entries
            old = entries.get(change.key)
            entries[change.key] = change.value
            rows.append(DiffRow(change.layer, change.key, "put", shown(change.key, old) if existed else None,
                                shown(change.key, change.value), existed))  # fmt: skip
    return rows


def known_scopes(layers: Iterable[Layer], *more: Iterable[Scope]) -> set[Scope]:
    found = {Scope(layer.environment, layer.service) for layer in layers if layer.kind is LayerKind.SERVICE}
    for scopes in more:
        found.update(scopes)
    return found


async def impact(
    current: Callable[[Layer], Mapping[str, JSONValue]],
    changes: Sequence[ChangeSpec],
    *,
    scopes: set[Scope],
    schemas: Mapping[Scope, ServiceSchema],
    instances: Mapping[Scope, int],
    visible: Callable[[Scope], bool],
) -> Impact:
    """The diff and blast radius of `changes` (already validated), given each layer's entries now.

    The layers are copied on the caller's thread; resolving (up to MAX_SCOPES scopes) runs on a
    worker thread and the schema checks on the schema worker, so the event loop never waits on them.
    """
    touched = sorted({c.layer for c in changes})
    config = [layer for layer in touched if layer.kind is not LayerKind.FLAGS]
    affected = sorted(s for s in scopes if any(affects(layer, s) for layer in config))
    shown = [s for s in affected if visible(s)][:MAX_SCOPES]
    needed = set(touched) | {layer for scope in shown for layer in scope.layers}
    layers = {layer: dict(current(layer)) for layer in needed}
    schemas = dict(schemas)

    def compute() -> tuple[Impact, list[tuple[Scope, list[str], dict[str, JSONValue]]]]:
        found = Impact(diff=diff_rows(layers, changes, schemas), not_shown=len(affected) - len(shown))
        after = after_changes({layer: dict(layers[layer]) for layer in touched}, changes)
        rows = []
        for scope in shown:
            before = resolve(layers[layer] for layer in scope.layers)
            resolved = resolve(after.get(layer, layers[layer]) for layer in scope.layers)
            rows.append((scope, changed_leaves(before, resolved), resolved))
        for layer in touched:
            if layer.kind is not LayerKind.FLAGS:
                continue
            flags = sorted({c.key for c in changes if c.layer == layer})
            env_instances = sum(n for s, n in instances.items() if s.environment == layer.environment)
            try:
                parse_flag_set(after[layer], prefix="flags")
                found.flags.append(FlagRow(layer.environment, flags, True, instances=env_instances))
            except errors.InvalidArgument as exc:
                found.flags.append(FlagRow(layer.environment, flags, False, exc.message, env_instances))
        return found, rows

    result, rows = await asyncio.to_thread(compute)
    verdicts = await schema_verdicts([(schemas.get(scope), resolved) for scope, _, resolved in rows])
    for (scope, keys, _), (has, ok, message, where) in zip(rows, verdicts, strict=True):
        result.scopes.append(ScopeRow(scope, keys, has, ok, message, where, instances.get(scope, 0)))
    return result


async def schema_verdicts(
    checks: Sequence[tuple[ServiceSchema | None, dict[str, JSONValue]]],
) -> list[tuple[bool, bool, str, str]]:
    """(has schema, accepts, error, field) per check, on the schema worker within the time budget."""

    def run() -> list[tuple[bool, bool, str, str]]:
        out = []
        for schema, config in checks:
            if schema is None:
                out.append((False, True, "", ""))
                continue
            try:
                schema.refuse(config, "this change")
                out.append((True, True, "", ""))
            except errors.InvalidArgument as exc:
                out.append((True, False, exc.message, exc.field))
        return out

    if not any(schema is not None for schema, _ in checks):
        return [(False, True, "", "") for _ in checks]
    try:
        return await run_on_schema_pool(run, SCHEMA_CHECK_BUDGET)
    except TimeoutError:
        slow = f"not checked: the schemas took longer than {SCHEMA_CHECK_BUDGET:g} s"
        return [(s is not None, s is None, "" if s is None else slow, "") for s, _ in checks]

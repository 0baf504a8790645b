"""Validated writes: each request becomes one etcd transaction.

A write reads the current contents of every layer it touches at one revision
R, builds the changes from them, checks each layer is still well-formed
afterwards (config layers: no key below a non-object; flag layers: the whole
flag set validates), and commits only if no key in those layers changed
since R (optimistic concurrency, retried a few times). The transaction also
touches each layer's marker key, so deletes move the layer's version too.
Nothing is ever half-written.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.flags.model import FlagSet, parse_flag_set, reparse_flag_set
from confmesh.keys import KeyLayout, Layer, LayerKind, Scope, split_key
from confmesh.merge import (
    MAX_VALUE_BYTES,
    JSONValue,
    find_conflicts,
    normalize,
    parse_json_value,
    resolve,
    same_value,
)
from confmesh.secrets import check_refs
from confmesh.server.audit import AuditEntry
from confmesh.server.etcd import Etcd
from confmesh.server.limits import lower_thread_priority
from confmesh.server.resolver import affects
from confmesh.server.schemas import ServiceSchema
from confmesh.server.snapshot_size import SnapshotSizes, remember_size
from confmesh.tracing import current_traceparent

T = TypeVar("T")
MAX_CHANGES = 1000
CONFLICT_RETRIES = 10
MAX_GUARDS = 120  # etcd allows 128 operations per transaction by default

Current = dict[Layer, dict[str, JSONValue]]
Plan = Callable[[Current], Sequence[ChangeSpec]]
# Decided again on every attempt of a transaction: more compares and ops to commit with its
# changes (e.g. a rollout record's guard and deletion), or an error that ends the write.
Also = Callable[[], Awaitable[tuple[Sequence[Any], Sequence[Any]]]]


@dataclass(frozen=True)
class WriteResult:
    revision: int
    changed: list[str]
    # With skip_unchanged: the changes that were already so (nothing written for them).
    unchanged: list[str] = field(default_factory=list)


def _encode(change: ChangeSpec) -> bytes:
    value = normalize(change.value, path=change.key, depth=change.key.count("."))
    if change.layer.kind is not LayerKind.FLAGS:
        check_refs(value, change.key)
    encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    if len(encoded) > MAX_VALUE_BYTES:
        raise errors.InvalidArgument(
            f"{change.key}: value is {len(encoded)} bytes; the limit is {MAX_VALUE_BYTES}",
            code="value_too_large",
            field=change.key,
        )
    return encoded


def validate_changes(changes: Sequence[ChangeSpec]) -> list[tuple[ChangeSpec, bytes]]:
    if not changes:
        raise errors.InvalidArgument("no changes given", field="changes")
    if len(changes) > MAX_CHANGES:
        raise errors.InvalidArgument(
            f"{len(changes)} changes in one request; the limit is {MAX_CHANGES}", field="changes"
        )
    seen: set[tuple[Layer, str]] = set()
    out = []
    for i, change in enumerate(changes):
        split_key(change.key)
        if (change.layer, change.key) in seen:
            raise errors.InvalidArgument(
                f"key {change.key!r} appears twice for layer {change.layer}", field=f"changes[{i}].key"
            )
        seen.add((change.layer, change.key))
        out.append((change, b"" if change.delete else _encode(change)))
    # Changes apply in order: deleting a subtree and then writing into it replaces it, but a
    # write followed by a delete that covers it would silently undo the write.
    for j, c in enumerate(changes):
        for d in changes[j + 1 :]:
            covers = d.delete and d.layer.kind is not LayerKind.FLAGS and d.layer == c.layer
            if covers and not c.delete and (c.key == d.key or c.key.startswith(d.key + ".")):
                raise errors.InvalidArgument(
                    f"key {c.key!r} is written and then deleted (via {d.key!r}) in layer {d.layer}",
                    field=c.key,
                )
    return out


def check_layer(layer: Layer, entries: dict[str, JSONValue]) -> None:
    if layer.kind is LayerKind.FLAGS:
        parse_flag_set(entries, prefix="flags")
        return
    conflicts = find_conflicts(entries)
    if conflicts:
        key, ancestor = conflicts[0]
        raise errors.InvalidArgument(
            f"key {key!r} would sit below {ancestor!r} in layer {layer}, but {ancestor!r} "
            "is not an object; delete one of them first",
            code="layer_conflict",
            field=key,
        )


# A write whose CPU work exceeds these runs it on the write pool rather than on the event loop.
MANY_BYTES = 64 * 1024
FEW_FLAGS = 20


class DecodedValues:
    """Each etcd value decoded once: a key's mod revision names one value for good, so a write that
    reads a 1,000-flag layer decodes only what changed since the last read (the rest costs a lookup).

    Values are shared between reads: they are never mutated (a plan builds new values). Bounded by
    the encoded bytes held, least recently read first out.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict[tuple[str, int], tuple[JSONValue, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # decoded on the loop or, for a large read, on the write pool

    def known(self, key: str, mod_revision: int) -> bool:
        return (key, mod_revision) in self._values

    def decode(self, key: str, mod_revision: int, raw: bytes, path: str) -> JSONValue:
        with self._lock:
            hit = self._values.get((key, mod_revision))
            if hit is not None:
                self._values.move_to_end((key, mod_revision))
                return hit[0]
        value = parse_json_value(raw, path=path)
        remember_size(value, len(raw))
        with self._lock:
            self._values[(key, mod_revision)] = (value, len(raw))
            self._bytes += len(raw)
            while self._bytes > self.max_bytes and self._values:
                _, (_, size) = self._values.popitem(last=False)
                self._bytes -= size
        return value


class FlagSetChecks:
    """A flag layer validated as a whole set on every write, re-parsing only the definitions that
    differ from the layer's last validated set (`reparse_flag_set`): a one-flag write to a 1,000-flag
    environment costs one flag's parse plus the set's cross checks."""

    MAX_LAYERS = 256

    def __init__(self) -> None:
        self._last: dict[Layer, tuple[dict[str, JSONValue], FlagSet]] = {}

    def costly(self, layer: Layer, entries: dict[str, JSONValue]) -> bool:
        """Whether checking `entries` means parsing many definitions (so it belongs off the loop)."""
        last = self._last.get(layer)
        if last is None:
            return len(entries) > FEW_FLAGS
        before = last[0]
        return sum(1 for k, v in entries.items() if before.get(k) is not v) > FEW_FLAGS

    def check(self, layer: Layer, entries: dict[str, JSONValue]) -> None:
        last = self._last.get(layer)
        parsed = reparse_flag_set(entries, *last) if last is not None else parse_flag_set(entries)
        if len(self._last) >= self.MAX_LAYERS and layer not in self._last:
            self._last.clear()
        self._last[layer] = (dict(entries), parsed)


def _drop_unchanged(
    changes: list[tuple[ChangeSpec, bytes]], current: Current
) -> tuple[list[tuple[ChangeSpec, bytes]], list[str]]:
    """Split off the changes that are already so: puts of the held value, deletes of absent keys."""
    kept, unchanged = [], []
    state = {layer: dict(entries) for layer, entries in current.items()}
    for change, encoded in changes:
        entries = state[change.layer]
        if change.delete:
            nested = change.layer.kind is not LayerKind.FLAGS
            present = change.key in entries or (
                nested and any(k.startswith(change.key + ".") for k in entries)
            )
            if not present:
                unchanged.append(f"{change.layer}/{change.key}")
                continue
            for k in [k for k in entries if k == change.key or (nested and k.startswith(change.key + "."))]:
                del entries[k]
        else:
            value = json.loads(encoded)
            if change.key in entries and same_value(entries[change.key], value):
                unchanged.append(f"{change.layer}/{change.key}")
                continue
            entries[change.key] = value
        kept.append((change, encoded))
    return kept, unchanged


def scope_layer(scope: Scope) -> Layer:
    return Layer.svc(scope.environment, scope.service)


def shown_in_audit(
    schemas: Mapping[Scope, ServiceSchema], layer: Layer, key: str, value: JSONValue
) -> JSONValue:
    """`value` as the audit log records it: a schema redacts only its own service layer's values."""
    if layer.kind is not LayerKind.SERVICE:
        return value
    schema = schemas.get(Scope(layer.environment, layer.service))
    return schema.redact_value(key, value) if schema is not None else value


# Schema checks run on one worker thread, never on the event loop; each call has a time budget.
# One thread for the costly parts of writes (schema checks, decoding and checking large layers), at
# the control-work thread's lowered priority: the event loop carries delivery.
_SCHEMA_POOL = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="confmesh-write", initializer=lower_thread_priority
)
SCHEMA_CHECK_BUDGET = 2.0


async def off_loop(fn: Callable[[], T]) -> T:
    """`fn()` on the write pool."""
    return await asyncio.get_running_loop().run_in_executor(_SCHEMA_POOL, fn)


async def run_on_schema_pool(fn: Callable[[], T], budget: float) -> T:
    """`fn` on the schema worker thread; TimeoutError past `budget` seconds (it finishes unseen)."""
    future = asyncio.get_running_loop().run_in_executor(_SCHEMA_POOL, fn)
    return await asyncio.wait_for(asyncio.shield(future), budget)


async def check_schemas(
    checks: Sequence[tuple[ServiceSchema, dict[str, JSONValue], bool]], what: str = "this change"
) -> None:
    """Refuse unless every (schema, resolved config, shared layer?) is valid, within the budget."""
    if not checks:
        return

    def run() -> None:
        for schema, config, shared in checks:
            schema.refuse(config, what, shared=shared)

    try:
        await run_on_schema_pool(run, SCHEMA_CHECK_BUDGET)
    except TimeoutError:
        names = ", ".join(str(schema.scope) for schema, _, _ in checks)
        raise errors.InvalidArgument(
            f"checking {what} against the schemas of {names} took longer than {SCHEMA_CHECK_BUDGET:g} s; "
            "refused (simplify the schema or the config)",
            code="schema_too_slow",
        ) from None


def ancestors(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


class Writer:
    def __init__(
        self,
        etcd: Etcd,
        layout: KeyLayout,
        schemas: Callable[[], Mapping[Scope, ServiceSchema]] | None = None,
        sizes: SnapshotSizes | None = None,
    ) -> None:
        self.etcd = etcd
        self.layout = layout
        # Refuses writes that would make a snapshot too large to receive (None: unchecked).
        self.sizes = sizes
        # The registered service schemas (the store's); writes are checked against them.
        self.schemas = schemas or dict
        self.decoded = DecodedValues()
        self.flag_sets = FlagSetChecks()

    async def _check_layers(self, written: Current) -> None:
        """Each written layer is still well-formed; a check that parses many flags runs off the loop."""

        def check() -> None:
            for layer, entries in written.items():
                if layer.kind is LayerKind.FLAGS:
                    self.flag_sets.check(layer, entries)
                else:
                    check_layer(layer, entries)

        flags = [layer for layer in written if layer.kind is LayerKind.FLAGS]
        if any(self.flag_sets.costly(layer, written[layer]) for layer in flags):
            await off_loop(check)
        else:
            check()

    def _guards(
        self, layers: Sequence[Layer], changes: Sequence[tuple[ChangeSpec, bytes]], revision: int
    ) -> list[Any]:
        """Compare clauses: nothing this write's validity depends on changed after `revision`.

        A config key can only conflict with its ancestors and descendants in
        the same layer, so writes to unrelated keys of one layer do not
        contend. Flag layers are validated as a whole set, so they are guarded
        whole; so is any write that would need too many guards.
        """
        guard = self.etcd.unchanged_since
        touched = {c.layer for c, _ in changes}
        whole = {layer for layer in layers if layer.kind is LayerKind.FLAGS or layer not in touched}
        compares = []
        for change, _ in changes:
            if change.layer in whole:
                continue
            key = self.layout.config_key(change.layer, change.key)
            compares.append(guard(key, revision, exact=True))
            compares += [
                guard(self.layout.config_key(change.layer, a), revision, exact=True)
                for a in ancestors(change.key)
            ]
            compares.append(guard(key + ".", revision))
        if len(compares) > MAX_GUARDS:
            compares, whole = [], set(layers)
        return compares + [guard(self.layout.layer_root(layer), revision) for layer in sorted(whole)]

    async def read_layer(self, layer: Layer, revision: int) -> tuple[int, dict[str, JSONValue]]:
        revision, entries, _ = await self.read_layer_revisions(layer, revision)
        return revision, entries

    async def read_layer_revisions(
        self, layer: Layer, revision: int
    ) -> tuple[int, dict[str, JSONValue], dict[str, int]]:
        """(read revision, entries, each entry's mod revision) of `layer` at `revision` (0: now)."""
        root = self.layout.layer_root(layer)
        revision, kvs = await self.etcd.list_prefix(root, revision)
        decoded = self.decoded

        def decode() -> tuple[dict[str, JSONValue], dict[str, int]]:
            entries: dict[str, JSONValue] = {}
            revisions: dict[str, int] = {}
            for kv in kvs:
                key = kv.key[len(root) :]
                revisions[key] = kv.mod_revision
                try:
                    entries[key] = decoded.decode(kv.key, kv.mod_revision, kv.value, key)
                except errors.InvalidArgument:
                    entries[key] = None
            return entries, revisions

        new = sum(len(kv.value) for kv in kvs if not decoded.known(kv.key, kv.mod_revision))
        entries, revisions = await off_loop(decode) if new > MANY_BYTES else decode()
        return revision, entries, revisions

    async def transact(
        self,
        layers: Sequence[Layer],
        plan: Plan,
        *,
        actor: str,
        reason: str,
        source: str = "write",
        skip_unchanged: bool = False,
        also: Also | None = None,
        audit_key: str = "",
    ) -> WriteResult:
        """Read `layers` at one revision, let `plan` build the changes, commit atomically.

        `audit_key`: where the audit record goes (default: a new key), for a record that refers to it.

        `also`: awaited on each attempt before committing; its compares and ops join the same
        transaction, and what it raises ends the write.

        `skip_unchanged` (Apply): a put of the value a key already holds and a
        delete of an absent key are reported as unchanged instead of written
        (or refused); when nothing is left, nothing is written at all.
        """
        for attempt in range(CONFLICT_RETRIES):
            revision = 0
            current: Current = {}
            schemas = dict(self.schemas())
            config_layers = [layer for layer in layers if layer.kind is not LayerKind.FLAGS]
            checked = {
                sc: sch for sc, sch in schemas.items() if any(affects(layer, sc) for layer in config_layers)
            }
            # Every layer a checked service resolves from is read (and guarded) at the same revision.
            read = sorted(set(layers) | {layer for sc in checked for layer in sc.layers})
            for layer in read:
                revision, current[layer] = await self.read_layer(layer, revision)
            validated = validate_changes(plan({k: dict(v) for k, v in current.items()}))
            unchanged: list[str] = []
            if skip_unchanged:
                validated, unchanged = _drop_unchanged(validated, current)
                if not validated:
                    return WriteResult(revision=revision, changed=[], unchanged=unchanged)
            touched = sorted({c.layer for c, _ in validated})
            if any(layer not in current for layer in touched):
                raise errors.ConfmeshError("internal: a plan touched a layer it did not read")
            ops = []
            final: dict[str, bytes | None] = {}  # etcd key -> value, None: delete (last change wins)
            changed: list[str] = []
            trace = current_traceparent()
            audit = AuditEntry(actor, reason, source, trace=trace)

            def shown(
                layer: Layer, key: str, value: JSONValue, schemas: dict[Scope, ServiceSchema] = schemas
            ) -> JSONValue:
                return shown_in_audit(schemas, layer, key, value)

            for change, encoded in validated:
                entries = current[change.layer]
                etcd_key = self.layout.config_key(change.layer, change.key)
                if change.delete:
                    if change.layer.kind is LayerKind.FLAGS:
                        doomed = [change.key] if change.key in entries else []
                    else:
                        doomed = [k for k in entries if k == change.key or k.startswith(change.key + ".")]
                    if not doomed:
                        raise errors.NotFound(
                            f"key {change.key!r} is not set in layer {change.layer}", field=change.key
                        )
                    for k in doomed:
                        audit.delete(change.layer, k, shown(change.layer, k, entries[k]))
                        del entries[k]
                        # Exact keys, not a range: a later write into the subtree must not overlap
                        # a delete in the same transaction (etcd refuses that).
                        final[self.layout.config_key(change.layer, k)] = None
                    changed.extend(f"{change.layer}/{k}" for k in sorted(doomed))
                else:
                    existed, old = change.key in entries, entries.get(change.key)
                    entries[change.key] = json.loads(encoded)
                    new = entries[change.key]
                    audit.put(change.layer, change.key, shown(change.layer, change.key, old),
                              shown(change.layer, change.key, new), existed)  # fmt: skip
                    final[etcd_key] = encoded
                    changed.append(f"{change.layer}/{change.key}")
            ops += [Etcd.delete_op(k) for k, v in final.items() if v is None]
            ops += [Etcd.put_op(k, v) for k, v in final.items() if v is not None]
            stamp: dict[str, Any] = {"actor": actor, "reason": reason, "at": time.time()}
            if trace:
                stamp["trace"] = trace
            marker = json.dumps(stamp, separators=(",", ":"))
            for layer in touched:
                ops.append(Etcd.put_op(self.layout.marker_key(layer), marker.encode()))
            await self._check_layers({layer: current[layer] for layer in touched})
            if self.sizes is not None:
                sizes, near = (
                    self.sizes,
                    self.sizes.exact_checks({layer: current[layer] for layer in touched}),
                )
                if near:  # encoding a snapshot near the limit costs its size: on the write thread
                    await off_loop(functools.partial(sizes.verify, near))
            await check_schemas(
                [
                    (sch, resolve(current[layer] for layer in sc.layers), scope_layer(sc) not in touched)
                    for sc, sch in sorted(checked.items())
                    if any(affects(layer, sc) for layer in touched)
                ]
            )
            ops.append(Etcd.put_op(audit_key or audit.key(self.layout), audit.encode()))
            compares = self._guards(read, validated, revision)
            if also is not None:
                more_compares, more_ops = await also()
                compares += more_compares
                ops += more_ops
            resp = await self.etcd.txn(compares, ops)
            if resp.succeeded:
                audit.committed(resp.header.revision)
                return WriteResult(revision=resp.header.revision, changed=changed, unchanged=unchanged)
            await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise errors.FailedPrecondition(
            "the layers kept changing under this write; try again", code="write_conflict"
        )

"""Change sets: what a write consists of, and the `confmesh apply` file format.

An apply file (JSON or YAML) lists changes applied in one transaction::

    reason: raise the pool for the sale
    changes:
      - key: database.pool.max          # defaults layer (no env)
        value: 20
      - key: database.pool.max          # environment-global layer
        env: prod
        value: 50
      - key: database.host              # service layer
        env: prod
        service: orders
        value: db-orders.internal
      - key: legacy.timeout
        env: prod
        delete: true
      - flag: new-checkout              # a flag of one environment: its whole definition
        env: prod
        value: {variants: {"on": true, "off": false}, default_variant: "off"}  # quote on/off in YAML
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from confmesh.errors import InvalidArgument
from confmesh.keys import Layer, split_key
from confmesh.merge import JSONValue, normalize

CHANGE_FIELDS = {"key", "flag", "value", "delete", "env", "environment", "service"}


@dataclass(frozen=True)
class ChangeSpec:
    layer: Layer
    key: str
    value: JSONValue = None
    delete: bool = False


@dataclass(frozen=True)
class ApplyDocument:
    changes: list[ChangeSpec]
    reason: str = ""


def parse_apply_document(text: str, *, source: str = "apply file") -> ApplyDocument:
    """Parse an apply file; every problem is an InvalidArgument naming its place."""
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(doc, Mapping) or "changes" not in doc:
        raise InvalidArgument(f"{source}: expected a mapping with a 'changes' list")
    unknown = set(doc) - {"changes", "reason"}
    if unknown:
        raise InvalidArgument(f"{source}: unknown top-level field(s): {', '.join(sorted(map(str, unknown)))}")
    reason = doc.get("reason") or ""
    if not isinstance(reason, str):
        raise InvalidArgument(f"{source}: 'reason' must be a string")
    raw_changes = doc["changes"]
    if not isinstance(raw_changes, list) or not raw_changes:
        raise InvalidArgument(f"{source}: 'changes' must be a non-empty list")
    changes = []
    for i, item in enumerate(raw_changes):
        where = f"{source}: changes[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidArgument(f"{where}: expected a mapping")
        unknown = set(item) - CHANGE_FIELDS
        if unknown:
            raise InvalidArgument(f"{where}: unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        flag = item.get("flag")
        key = item.get("key") if flag is None else flag
        if ("key" in item) == (flag is not None) or not isinstance(key, str):
            raise InvalidArgument(f"{where}: 'key' (a dotted string) or 'flag' (a flag key) is required")
        env = item.get("env", item.get("environment"))
        if flag is not None and (not isinstance(env, str) or "service" in item):
            raise InvalidArgument(
                f"{where}: a flag change takes 'env' (flags are per environment), not 'service'"
            )
        service = item.get("service")
        for name, val in (("env", env), ("service", service)):
            if val is not None and not isinstance(val, str):
                raise InvalidArgument(f"{where}: '{name}' must be a string")
        delete = item.get("delete", False)
        if not isinstance(delete, bool):
            raise InvalidArgument(f"{where}: 'delete' must be true or false")
        if delete == ("value" in item):
            raise InvalidArgument(f"{where}: give exactly one of 'value' or 'delete: true'")
        try:
            split_key(key)
            layer = Layer.flags(env) if flag is not None else Layer.of(env, service)
            value = None if delete else normalize(item["value"], path=key)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc.message}", code=exc.code, field=exc.field) from exc
        changes.append(ChangeSpec(layer, key, value, delete))
    return ApplyDocument(changes, reason)

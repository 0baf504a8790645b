"""Registered service schemas: the JSON Schema each (environment, service) config must satisfy.

A service registers the JSON Schema of its settings (``confmesh schema push``
generates it from a pydantic model). From then on:

* a write that would make the resolved config of any affected service
  invalid is refused before anything is written (``Writer``);
* an out-of-band change that breaks it is not served: the service keeps its
  last valid snapshot and ``status`` reports the violation (``Resolver``);
* values of fields the schema marks secret (``format: password`` or
  ``writeOnly``, as pydantic's ``SecretStr`` produces) are redacted in that
  scope's own views: its resolved config and explanations, its service
  layer, and the audit records of writes to its service layer. A schema never
  redacts what other scopes see (the shared defaults and environment layers).

A schema is untrusted input from whoever may write the service's layer, so
it is held to what is safe to run on a shared server: ``$ref`` resolves only
inside the document itself (nothing is ever fetched), and ``pattern`` /
``patternProperties`` run on RE2, which matches in linear time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry

from confmesh import errors
from confmesh.keys import Scope
from confmesh.merge import JSONValue, loads_json
from confmesh.server.limits import MAX_ISSUE_MESSAGE, clip_middle

REDACTED = "<redacted>"
MAX_ISSUES = 20
MAX_SCHEMA_DEPTH = 64
ANY_KEY = "*"  # a path segment standing for any object key (additionalProperties, patternProperties)
ITEM = "[]"  # a path segment standing for any array item (items, prefixItems)

Path = tuple[str, ...]


def _is_secret(node: Any) -> bool:
    return isinstance(node, dict) and (node.get("format") == "password" or node.get("writeOnly") is True)


def _compile(pattern: str) -> Any:
    try:
        return re2.compile(pattern)
    except re2.error as exc:
        raise errors.InvalidArgument(
            f"pattern {pattern!r} is not supported: patterns run on RE2 (linear time; no lookaround "
            f"or backreferences): {exc}",
            field="schema",
            code="unsupported_pattern",
        ) from exc


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compile(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(
    validator: Any, properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        compiled = _compile(pattern)
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_Validator: Any = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _re2_pattern, "patternProperties": _re2_pattern_properties}
)


def _check_untrusted(document: Any, scope: Scope) -> None:
    """Refuse what a shared server must not run: non-local ``$ref``s, non-RE2 patterns, absurd depth."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise errors.InvalidArgument(
                f"the schema for {scope} is nested deeper than {MAX_SCHEMA_DEPTH} levels", field="schema"
            )
        if isinstance(node, dict):
            for key, value in node.items():
                at = f"{where}/{key}"
                if key in ("$ref", "$dynamicRef") and (
                    not isinstance(value, str) or not value.startswith("#")
                ):
                    raise errors.InvalidArgument(
                        f"the schema for {scope} has {key} {value!r} at {at}: only references inside the "
                        'schema itself ("#/...") are resolved; inline the referenced schema',
                        field="schema",
                        code="remote_ref",
                    )
                if key == "pattern" and isinstance(value, str):
                    _compile(value)
                if key == "patternProperties" and isinstance(value, dict):
                    for pattern in value:
                        _compile(pattern)
                stack.append((value, at, depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{where}/{i}", depth + 1) for i, value in enumerate(node))


def _matches(pattern: Path, path: Sequence[str]) -> bool:
    """`pattern` (with ANY_KEY wildcards) matches the first len(pattern) segments of `path`."""
    if len(path) < len(pattern):
        return False
    return all(p == s or (p == ANY_KEY and s != ITEM) for p, s in zip(pattern, path, strict=False))


@dataclass(frozen=True)
class SchemaRecord:
    """What etcd holds for a registered schema: the document and who registered it."""

    document: dict[str, Any]
    registered_by: str = ""

    def encode(self) -> bytes:
        return json.dumps(
            {"schema": self.document, "registered_by": self.registered_by}, separators=(",", ":")
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SchemaRecord:
        doc = loads_json(raw)
        if isinstance(doc, dict) and set(doc) == {"schema", "registered_by"}:
            return cls(doc["schema"], str(doc["registered_by"]))
        return cls(doc)  # written before registrants were recorded: the bare document


class ServiceSchema:
    def __init__(self, scope: Scope, document: Any, registered_by: str = "") -> None:
        if not isinstance(document, dict):
            raise errors.InvalidArgument(f"the schema for {scope} must be a JSON object", field="schema")
        _check_untrusted(document, scope)
        try:
            _Validator.check_schema(document)
        except SchemaError as exc:
            raise errors.InvalidArgument(f"the schema for {scope} is not a valid JSON Schema: {exc.message}",
                                         field="schema") from exc  # fmt: skip
        self.scope = scope
        self.document = document
        self.registered_by = registered_by
        # An empty registry: a reference that is not inside the document fails instead of being fetched.
        self.validator = _Validator(document, registry=Registry())
        self.secret_paths: frozenset[Path] = frozenset(self._secret_paths(document, (), 0, frozenset()))

    def describe(self) -> str:
        """Whose schema this is, for errors on writes to layers other scopes share."""
        by = f", registered by {self.registered_by}" if self.registered_by else ""
        return f"the schema of {self.scope}{by}"

    def _resolve(self, node: Any) -> Any:
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = self.document
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return {**node, **target} if isinstance(target, dict) else node
        return node

    def _secret_paths(self, node: Any, prefix: Path, depth: int, refs: frozenset[str]) -> Iterator[Path]:
        if depth > MAX_SCHEMA_DEPTH or not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in refs:  # a recursive definition: its secrets were found on the way in
                return
            refs = refs | {ref}
            node = self._resolve(node)
        if _is_secret(node):
            yield prefix
            return
        for branch in (*node.get("anyOf", ()), *node.get("oneOf", ()), *node.get("allOf", ())):
            yield from self._secret_paths(branch, prefix, depth + 1, refs)
        for name, sub in (node.get("properties") or {}).items():
            yield from self._secret_paths(sub, (*prefix, *name.split(".")), depth + 1, refs)
        children: list[Any] = list((node.get("patternProperties") or {}).values())
        extra = node.get("additionalProperties")
        children += [extra] if isinstance(extra, dict) else []
        for sub in children:
            yield from self._secret_paths(sub, (*prefix, ANY_KEY), depth + 1, refs)
        items = [node["items"]] if isinstance(node.get("items"), dict) else []
        items += [s for s in node.get("prefixItems", ()) if isinstance(s, dict)]
        for sub in items:
            yield from self._secret_paths(sub, (*prefix, ITEM), depth + 1, refs)

    def is_secret_path(self, path: Sequence[str]) -> bool:
        """`path` is a secret field or lies inside one."""
        return any(_matches(p, path) for p in self.secret_paths)

    def holds_secret(self, path: Sequence[str]) -> bool:
        """`path` is, lies inside, or contains a secret field (so its value may show one)."""
        return any(_matches(p, path) or _matches(tuple(path), p) for p in self.secret_paths)

    def redact_value(self, key: str, value: JSONValue) -> JSONValue:
        """`value` (set at dotted `key`) with every secret inside it redacted."""
        return _redact(value, tuple(key.split(".")) if key else (), self) if self.secret_paths else value

    def issues(self, config: dict[str, JSONValue]) -> list[errors.FieldIssue]:
        """What makes `config` invalid (empty: valid), secret values never quoted.

        A secret reference stands for a string only the client sees: it is
        checked as a string, and no constraint on its value is checked here.
        """
        refs: set[str] = set()
        checked = _with_placeholders(config, "", refs)
        found = [
            e for e in self.validator.iter_errors(checked)
            if ".".join(str(p) for p in e.absolute_path) not in refs
        ]  # fmt: skip
        out: list[errors.FieldIssue] = []
        for error in sorted(found, key=lambda e: list(map(str, e.absolute_path))):
            out.extend(self._describe(error))
            if len(out) >= MAX_ISSUES:
                break
        return out

    def _describe(self, error: ValidationError) -> list[errors.FieldIssue]:
        base = ".".join(str(p) for p in error.absolute_path)
        segments = tuple(ITEM if isinstance(p, int) else str(p) for p in error.absolute_path)

        def join(name: object) -> str:
            return f"{base}.{name}" if base else str(name)

        instance = error.instance
        if error.validator == "additionalProperties" and isinstance(instance, dict):
            known = set((error.schema.get("properties") or {}) if isinstance(error.schema, dict) else ())
            return [errors.FieldIssue(join(k), "unknown key: the schema allows no other keys")
                    for k in sorted(instance) if k not in known]  # fmt: skip
        if error.validator == "required" and isinstance(instance, dict):
            required = error.validator_value if isinstance(error.validator_value, list) else []
            return [
                errors.FieldIssue(join(k), "required key is missing") for k in required if k not in instance
            ]
        if self.holds_secret(segments):
            return [
                errors.FieldIssue(base or "(root)", f"invalid secret value ({error.validator}; {REDACTED})")
            ]
        return [errors.FieldIssue(base or "(root)", clip_middle(error.message, MAX_ISSUE_MESSAGE))]

    def refuse(self, config: dict[str, JSONValue], what: str, *, shared: bool = False) -> None:
        """If `config` is invalid, raise InvalidArgument naming the service, first field and reason.

        `shared`: the write is to a layer other scopes share too, so the error
        also says whose schema refused it.
        """
        issues = self.issues(config)
        if issues:
            first = issues[0]
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            whose = f" ({self.describe()})" if shared else ""
            raise errors.InvalidArgument(
                f"{what} would make the config of {self.scope} invalid against its schema{whose}: "
                f"{first.path}: {first.message}{more}",
                code="schema_violation",
                field=first.path,
            )


def _with_placeholders(node: JSONValue, prefix: str, refs: set[str]) -> JSONValue:
    if isinstance(node, dict):
        if set(node) == {"$secret"}:
            refs.add(prefix)
            return "secret reference"
        return {k: _with_placeholders(v, f"{prefix}.{k}" if prefix else k, refs) for k, v in node.items()}
    return node


def redact(value: JSONValue) -> JSONValue:
    """A secret field's value for display: secret references stay (they hold no secret)."""
    if isinstance(value, dict) and set(value) == {"$secret"}:
        return value
    return REDACTED


def _redact(node: JSONValue, path: Path, schema: ServiceSchema) -> JSONValue:
    if path and schema.is_secret_path(path):
        return redact(node)
    if not schema.holds_secret(path):
        return node
    if isinstance(node, dict):
        return {k: _redact(v, (*path, *k.split(".")), schema) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, (*path, ITEM), schema) for v in node]
    return node


def redact_config(config: dict[str, JSONValue], schema: ServiceSchema | None) -> dict[str, JSONValue]:
    """`config` with the values at the schema's secret paths redacted (a copy)."""
    if schema is None or not schema.secret_paths:
        return config
    result = _redact(config, (), schema)
    assert isinstance(result, dict)
    return result


def contains_redacted(value: JSONValue) -> bool:
    """Whether a recorded value had a secret redacted anywhere inside it."""
    if value == REDACTED:
        return True
    if isinstance(value, dict):
        return any(contains_redacted(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_redacted(v) for v in value)
    return False

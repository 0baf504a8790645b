"""Registered service schemas: the JSON Schema each (environment, service) config must satisfy.

A service registers the JSON Schema of its settings (``confmesh schema push``
generates it from a pydantic model). From then on:

* a write that would make the resolved config of any affected service
  invalid is refused before anything is written (``Writer``);
* an out-of-band change that breaks it is not served: the service keeps its
  last valid snapshot and ``status`` reports the violation (``Resolver``);
* values of fields the schema marks secret (``format: password`` or
  ``writeOnly``, as pydantic's ``SecretStr`` produces) are redacted in the
  audit log, its log lines and resolve/explain output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from confmesh import errors
from confmesh.keys import Scope
from confmesh.merge import JSONValue

REDACTED = "<redacted>"
MAX_ISSUES = 20


def _is_secret(node: Any) -> bool:
    return isinstance(node, dict) and (node.get("format") == "password" or node.get("writeOnly") is True)


class ServiceSchema:
    def __init__(self, scope: Scope, document: Any) -> None:
        if not isinstance(document, dict):
            raise errors.InvalidArgument(f"the schema for {scope} must be a JSON object", field="schema")
        try:
            Draft202012Validator.check_schema(document)
        except SchemaError as exc:
            raise errors.InvalidArgument(f"the schema for {scope} is not a valid JSON Schema: {exc.message}",
                                         field="schema") from exc  # fmt: skip
        self.scope = scope
        self.document = document
        self.validator = Draft202012Validator(document)
        self.secret_paths = frozenset(self._secret_paths(document, document, "", 0))

    def _resolve(self, node: Any, root: dict[str, Any]) -> Any:
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return target
        return node

    def _secret_paths(self, node: Any, root: dict[str, Any], prefix: str, depth: int) -> Iterator[str]:
        node = self._resolve(node, root)
        if depth > 32 or not isinstance(node, dict):
            return
        if _is_secret(node):
            yield prefix
            return
        for branch in (*node.get("anyOf", ()), *node.get("oneOf", ()), *node.get("allOf", ())):
            yield from self._secret_paths(branch, root, prefix, depth + 1)
        for name, sub in (node.get("properties") or {}).items():
            yield from self._secret_paths(sub, root, f"{prefix}.{name}" if prefix else name, depth + 1)

    def is_secret(self, key: str) -> bool:
        return any(key == s or key.startswith(s + ".") or s.startswith(key + ".") for s in self.secret_paths)

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
        if self.is_secret(base):
            return [errors.FieldIssue(base, f"invalid secret value ({error.validator}; {REDACTED})")]
        return [errors.FieldIssue(base or "(root)", error.message)]

    def refuse(self, config: dict[str, JSONValue], what: str) -> None:
        """If `config` is invalid, raise InvalidArgument naming the service, first field and reason."""
        issues = self.issues(config)
        if issues:
            first = issues[0]
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            raise errors.InvalidArgument(
                f"{what} would make the config of {self.scope} invalid against its schema: "
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


def redact_config(config: dict[str, JSONValue], schema: ServiceSchema | None) -> dict[str, JSONValue]:
    """`config` with the values at the schema's secret paths redacted (a copy)."""
    if schema is None or not schema.secret_paths:
        return config

    def walk(node: JSONValue, prefix: str) -> JSONValue:
        if prefix and prefix in schema.secret_paths:
            return redact(node)
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()}
        return node

    result = walk(config, "")
    assert isinstance(result, dict)
    return result

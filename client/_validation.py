"""Snapshot validation against the service's own schema (pure)."""

from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from confmesh.errors import FieldIssue, SnapshotRejected

_SECRET_TYPES = (SecretStr, SecretBytes)


def _secret_in(annotation: Any) -> bool:
    if annotation in _SECRET_TYPES:
        return True
    return any(_secret_in(arg) for arg in typing.get_args(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


@functools.cache
def secret_fields(schema: type[BaseModel], _depth: int = 0) -> frozenset[str]:
    """Dotted paths (by alias-free field name) of the SecretStr/SecretBytes fields in `schema`."""
    paths: set[str] = set()
    if _depth > 16:
        return frozenset()
    for name, field in schema.model_fields.items():
        if _secret_in(field.annotation):
            paths.add(name)
        for model in _models_in(field.annotation):
            paths.update(f"{name}.{sub}" for sub in secret_fields(model, _depth + 1))
    return frozenset(paths)


def issues_from(exc: ValidationError, schema: type[BaseModel] | None = None) -> list[FieldIssue]:
    """One issue per error; for secret fields only the error type (a message might quote the value)."""
    secrets = secret_fields(schema) if schema is not None else frozenset()
    issues = []
    for err in exc.errors():
        path = ".".join(str(part) for part in err["loc"])
        secret = any(path == s or path.startswith(s + ".") for s in secrets)
        issues.append(
            FieldIssue(path, f"invalid secret value ({err['type']}; redacted)" if secret else err["msg"])
        )
    return issues


def validate(schema: type[BaseModel] | None, config: dict[str, Any]) -> Any:
    """The typed config for `config`, or SnapshotRejected naming each failing field."""
    if schema is None:
        return config
    try:
        return schema.model_validate(config)
    except ValidationError as exc:
        issues = issues_from(exc, schema)
        summary = "; ".join(str(i) for i in issues[:5])
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        raise SnapshotRejected(
            f"{len(issues)} field(s) fail {schema.__name__}: {summary}{more}", issues
        ) from exc

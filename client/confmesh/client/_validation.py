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


def validate(
    schema: type[BaseModel] | None,
    config: dict[str, Any],
    *,
    previous: Any = None,
    changed: frozenset[str] | None = None,
) -> Any:
    """The typed config for `config`, or SnapshotRejected naming each failing field.

    `previous` is the typed config this one replaces and `changed` the top-level keys in which
    `config` differs from it (None: any may). When the schema allows (see `_field_keys`), only
    those fields are validated again, with the model's own rules; anything else, and any
    failure, takes the whole-model path, so the result and the errors are the same either way.
    """
    if schema is None:
        return config
    if changed is not None and type(previous) is schema:
        model = _revalidate(schema, config, previous, changed)
        if model is not None:
            return model
    try:
        return schema.model_validate(config)
    except ValidationError as exc:
        issues = issues_from(exc, schema)
        summary = "; ".join(str(i) for i in issues[:5])
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        raise SnapshotRejected(
            f"{len(issues)} field(s) fail {schema.__name__}: {summary}{more}", issues
        ) from exc


@functools.cache
def _field_keys(schema: type[BaseModel]) -> dict[str, str] | None:
    """Input key -> field name, when validating one field alone gives what the whole model gives.

    pydantic's validate_assignment runs a field's type, constraints and field validators (with
    the other fields as `info.data`) and the model's after-validators. It cannot stand in for
    before/wrap model validators, old-style validators, `model_post_init`, alias choices or
    paths, or a field readable under two names; such schemas are validated whole.
    """
    decorators = schema.__pydantic_decorators__
    if decorators.root_validators or decorators.validators:
        return None
    if any(d.info.mode != "after" for d in decorators.model_validators.values()):
        return None
    if getattr(schema, "__pydantic_post_init__", None) is not None:
        return None
    config = schema.model_config
    by_name = config.get("populate_by_name") or config.get("validate_by_name")
    if config.get("validate_by_alias") is False:
        return None
    keys: dict[str, str] = {}
    for name, info in schema.model_fields.items():
        alias = info.validation_alias if info.validation_alias is not None else info.alias
        if alias is not None and (not isinstance(alias, str) or by_name):
            return None
        keys[alias or name] = name
    return keys


def _revalidate(
    schema: type[BaseModel], config: dict[str, Any], previous: BaseModel, changed: frozenset[str]
) -> BaseModel | None:
    keys = _field_keys(schema)
    if keys is None:
        return None
    ignores_extra = schema.model_config.get("extra") in (None, "ignore")
    model = previous.model_copy()
    validator = schema.__pydantic_validator__
    for key in changed:
        name = keys.get(key)
        if name is None:
            if ignores_extra:
                continue  # the whole model would ignore it too
            return None
        if key not in config:
            return None  # a removed field: its default or its error, as the whole model decides
        try:
            assigned = validator.validate_assignment(model, name, config[key])
        except ValidationError:
            return None  # the whole-model path names the failure exactly
        if not isinstance(assigned, schema):
            return None
        model = assigned
    return model

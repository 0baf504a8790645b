"""Snapshot validation against the service's own schema (pure)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from confmesh.errors import FieldIssue, SnapshotRejected


def issues_from(exc: ValidationError) -> list[FieldIssue]:
    return [FieldIssue(".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()]


def validate(schema: type[BaseModel] | None, config: dict[str, Any]) -> Any:
    """The typed config for `config`, or SnapshotRejected naming each failing field."""
    if schema is None:
        return config
    try:
        return schema.model_validate(config)
    except ValidationError as exc:
        issues = issues_from(exc)
        summary = "; ".join(str(i) for i in issues[:5])
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        raise SnapshotRejected(
            f"{len(issues)} field(s) fail {schema.__name__}: {summary}{more}", issues
        ) from exc

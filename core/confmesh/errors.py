"""confmesh's exception hierarchy.

    ConfmeshError
    ├── InvalidArgument      bad input: a name, key, value or request (INVALID_ARGUMENT)
    ├── NotFound             nothing at that key / scope (NOT_FOUND)
    ├── FailedPrecondition   the request conflicts with the current state (FAILED_PRECONDITION)
    ├── Unavailable          etcd or the confmesh server cannot be reached (UNAVAILABLE)
    ├── ResourceExhausted    a caller is over a limit on concurrent or costly work (RESOURCE_EXHAUSTED)
    ├── SnapshotRejected     a snapshot failed the client's schema (never leaves the client)
    └── StartupError         a client could not obtain a first valid configuration

Backend errors (grpc, etcd) are mapped to these at the edge; the server maps
them to gRPC status codes only in its servicers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldIssue:
    """One failing field: a dotted path and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfmeshError(Exception):
    """Base class of every error confmesh raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class InvalidArgument(ConfmeshError):
    code = "invalid_argument"


class NotFound(ConfmeshError):
    code = "not_found"


class FailedPrecondition(ConfmeshError):
    code = "failed_precondition"


class PermissionDenied(ConfmeshError):
    code = "permission_denied"


class Unauthenticated(ConfmeshError):
    code = "unauthenticated"


class Unavailable(ConfmeshError):
    code = "unavailable"


class ResourceExhausted(ConfmeshError):
    """The caller is over a limit on the work it may make a server do (too many at once, too costly)."""

    code = "resource_exhausted"


class StartupError(ConfmeshError):
    code = "startup"


class SnapshotRejected(ConfmeshError):
    """A snapshot did not validate against the client's schema."""

    code = "snapshot_rejected"

    def __init__(self, message: str, issues: list[FieldIssue]) -> None:
        super().__init__(message, field=issues[0].path if issues else "")
        self.issues = issues


__all__ = [
    "ConfmeshError",
    "FailedPrecondition",
    "FieldIssue",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SnapshotRejected",
    "StartupError",
    "Unauthenticated",
    "Unavailable",
]

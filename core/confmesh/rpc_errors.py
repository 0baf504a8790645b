"""confmesh errors across gRPC: the status code each maps to, its detail trailer, and back."""

from __future__ import annotations

from typing import Any

import grpc

from confmesh import errors
from confmesh.v1 import admin_pb2

ERROR_DETAIL_KEY = "confmesh-error-bin"

_STATUS_FOR: dict[type[errors.ConfmeshError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_for(exc: errors.ConfmeshError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS_FOR:
            return _STATUS_FOR[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def error_trailers(exc: errors.ConfmeshError) -> tuple[tuple[str, bytes], ...]:
    detail = admin_pb2.ErrorDetail(code=exc.code, field=exc.field, message=exc.message)
    return ((ERROR_DETAIL_KEY, detail.SerializeToString()),)


_ERROR_FOR: dict[grpc.StatusCode, type[errors.ConfmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError, target: str = "") -> errors.ConfmeshError:
    """Map a failed gRPC call to a confmesh error, keeping the server's detail."""
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    message: str = exc.details() or code.name  # type: ignore[attr-defined]
    detail = admin_pb2.ErrorDetail()
    trailers: Any = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, raw in trailers:
        if key == ERROR_DETAIL_KEY and isinstance(raw, bytes):
            detail.ParseFromString(raw)
    if code == grpc.StatusCode.UNAVAILABLE and target:
        message = f"confmesh server at {target} is unavailable: {message}"
    cls = _ERROR_FOR.get(code, errors.ConfmeshError)
    return cls(message, code=detail.code or None, field=detail.field)

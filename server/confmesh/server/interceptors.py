"""Turn undecodable requests into INVALID_ARGUMENT instead of gRPC's UNKNOWN.

gRPC decodes a request before any servicer code runs, and a message that is
not valid protobuf surfaces as UNKNOWN ("Unexpected DecodeError"). This
interceptor takes the raw bytes and decodes them itself, so a malformed
request gets a clear INVALID_ARGUMENT naming the message type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError


class Malformed:
    """What a checked deserializer returns for bytes that are not the expected message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def checked_deserializer(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """`deserialize` returning Malformed instead of raising, for servicers that check for it.

    The interceptor leaves such methods alone, which spares a long-lived stream
    an extra generator hop on every message it receives.
    """

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:
            return Malformed(f"malformed request for {method}: {exc}")

    decode.reports_malformed = True  # type: ignore[attr-defined]
    return decode


class DecodeErrorsAsInvalidArgument(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps each method's handler once (not per call: a Watch stream lives long, and 10,000 of
    them would otherwise each hold their own copy of the wrappers)."""

    def __init__(self) -> None:
        self._wrapped: dict[tuple[str, int], tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if (
            handler is None
            or handler.request_deserializer is None
            or getattr(handler.request_deserializer, "reports_malformed", False)
        ):
            return handler
        method = details.method  # type: ignore[attr-defined]
        key = (method, id(handler))
        hit = self._wrapped.get(key)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = _wrap(handler, method)
        self._wrapped[key] = (handler, wrapped)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    assert handler.request_deserializer is not None
    decode = checked_deserializer(handler.request_deserializer, method)
    if handler.unary_unary is not None:
        inner: Any = handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = decode(raw)
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=handler.response_serializer
        )
    if handler.stream_stream is not None:
        stream: Any = handler.stream_stream

        async def requests(
            raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for raw in raw_requests:
                request = decode(raw)
                if isinstance(request, Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                yield request

        async def bidi(
            raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            async for response in stream(requests(raw_requests, context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(
            bidi, request_deserializer=None, response_serializer=handler.response_serializer
        )
    return handler

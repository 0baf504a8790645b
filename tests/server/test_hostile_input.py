"""Hostile input: every limit is refused with its name, and garbage never crashes the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from confmesh.changes import ChangeSpec, parse_apply_document
from confmesh.client import AdminClient, InvalidArgument
from confmesh.errors import ConfmeshError
from confmesh.flags.files import flags_from_document
from confmesh.keys import Layer
from confmesh.server import ConfmeshServer
from confmesh.v1 import config_pb2


async def test_each_limit_is_refused_with_the_limit_named(admin: AdminClient) -> None:
    with pytest.raises(InvalidArgument, match="the limit is 262144"):
        await admin.put("big", "x" * 600_000)
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(InvalidArgument, match="nested deeper than 28 levels"):
        await admin.put("deep", deep)
    shallow: Any = 1
    for _ in range(20):
        shallow = {"d": shallow}
    with pytest.raises(InvalidArgument, match="nested deeper than 28 levels"):  # key depth counts too
        await admin.put("a.b.c.d.e.f.g.h.i.j", shallow)
    with pytest.raises(InvalidArgument, match="the limit is 256"):
        await admin.put("k" * 300, 1)
    with pytest.raises(InvalidArgument, match="the limit is 16"):
        await admin.put(".".join(["a"] * 20), 1)
    with pytest.raises(InvalidArgument, match="1001 changes in one request; the limit is 1000"):
        await admin.apply([ChangeSpec(Layer.defaults(), f"k{i}", i) for i in range(1001)])
    with pytest.raises(InvalidArgument, match=r"beyond ±2\*\*53"):
        await admin.put("n", 2**60)
    assert (await admin.resolve("prod", "api")).config == {}  # nothing was written


async def test_a_message_beyond_the_transport_limit_is_refused(server: ConfmeshServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        put = channel.unary_unary("/confmesh.v1.AdminService/Put", request_serializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await put(b"\x12\x01a" + b"\x1a" + b"\x80\x80\x80\x03" + b"x" * (6 * 1024 * 1024))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


EXPECTED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
METHODS = [
    "/confmesh.v1.AdminService/Put", "/confmesh.v1.AdminService/Delete", "/confmesh.v1.AdminService/Apply",
    "/confmesh.v1.AdminService/Resolve", "/confmesh.v1.AdminService/PutFlags",
    "/confmesh.v1.AdminService/SetFlagEnabled", "/confmesh.v1.ConfigService/GetSnapshot",
]  # fmt: skip


async def test_random_bytes_on_every_unary_method_never_crash_the_server(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    payloads = st.binary(max_size=512)

    async with grpc.aio.insecure_channel(server.address) as channel:
        calls = {
            m: channel.unary_unary(m, request_serializer=None, response_deserializer=None) for m in METHODS
        }
        seen_codes: set[grpc.StatusCode] = set()
        unexpected: list[tuple[str, bytes, grpc.StatusCode, str | None]] = []

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(METHODS), payloads)
        def fuzz(method: str, payload: bytes) -> None:
            fuzz_inputs.append((method, payload))

        fuzz_inputs: list[tuple[str, bytes]] = []
        fuzz()
        for method, payload in fuzz_inputs:
            try:
                await calls[method](payload, timeout=5)
                seen_codes.add(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                seen_codes.add(exc.code())
                if exc.code() not in EXPECTED_CODES:
                    unexpected.append((method, payload, exc.code(), exc.details()))
        assert unexpected == []
        assert grpc.StatusCode.INVALID_ARGUMENT in seen_codes
    # Still healthy and consistent afterwards.
    result = await admin.put("after.fuzz", True, env="prod")
    assert (await admin.resolve("prod", "api", "after.fuzz")).value is True
    assert server.source is not None
    assert await server.source.check_consistency()
    assert result.revision > 0


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_the_apply_parser_refuses_garbage_cleanly(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_apply_document(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=4))
@example({"f": {"type": []}})  # found by this test: an unhashable "type" crashed the classic-format check
def test_flag_documents_are_accepted_or_refused_cleanly(document: dict[str, Any]) -> None:
    with contextlib.suppress(ConfmeshError):
        flags_from_document(document)
    with contextlib.suppress(ConfmeshError):
        flags_from_document(json.loads(json.dumps({"flags": document})))


async def test_bytes_that_are_not_the_request_get_invalid_argument_naming_it(server: ConfmeshServer) -> None:
    garbage = b"\xff\xff\xff\xff"
    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = channel.stream_stream("/confmesh.v1.ConfigService/Watch")
        call = watch(iter([garbage]))
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await call.read()
        assert first.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request for /confmesh.v1.ConfigService/Watch" in (first.value.details() or "")

        subscribe = config_pb2.WatchRequest(
            subscribe=config_pb2.Subscribe(environment="prod", service="api", instance_id="i")
        ).SerializeToString()

        async def later_garbage() -> AsyncIterator[bytes]:
            yield subscribe
            await asyncio.sleep(0.2)
            yield garbage

        async def read_all(call: Any) -> None:
            while await call.read() is not grpc.aio.EOF:
                pass

        with pytest.raises(grpc.aio.AioRpcError) as later:
            await read_all(watch(later_garbage()))
        assert later.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in (later.value.details() or "")

        for method in ("/confmesh.v1.ConfigService/GetSnapshot", "/confmesh.v1.AdminService/Put"):
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await channel.unary_unary(method)(garbage)
            assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert f"malformed request for {method}" in (unary.value.details() or "")

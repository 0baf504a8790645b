"""flagd's sync protocol, served by confmesh, consumed by flagd's own in-process provider from PyPI."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer
from confmesh.server.flagd_sync import selected_environment
from tests.helpers import eventually

USERS = 10_000
# As `confmesh flags import --format flagd --fractional v3` stores a flagd rollout.
ROLLOUT = {"variants": {"new": "new", "old": "old"}, "default_variant": "old", "bucketing": "murmur3-cbor",
           "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.id"}]},
                                        ["new", 30], ["old", 70]]}}  # fmt: skip
KILL = {"variants": {"on": True, "off": False}, "default_variant": "on", "off_variant": "off"}
GATED = {"variants": {"on": True, "off": False}, "default_variant": "on",
         "prerequisites": [{"flag": "kill", "variant": "on"}]}  # fmt: skip


@pytest.fixture
def flagd_client(server: ConfmeshServer) -> Iterator[Any]:
    host, _, port = server.address.rpartition(":")
    provider = FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS, host=host, port=int(port), selector="flagSetId=prod",
        deadline_ms=5000, retry_backoff_ms=200, retry_backoff_max_ms=500,
    )  # fmt: skip
    api.set_provider(provider, "flagd")
    try:
        yield api.get_client("flagd")
    finally:
        api.clear_providers()


async def test_the_flagd_provider_evaluates_confmesh_flags_and_sees_a_kill_fast(
    server: ConfmeshServer, admin: AdminClient, flagd_client: Any
) -> None:
    await admin.put_flags("prod", {"rollout": ROLLOUT, "kill": KILL, "gated": GATED})
    await eventually(lambda: flagd_client.get_boolean_value("kill", False) is True, timeout=10)
    details = flagd_client.get_string_details(
        "rollout", "none", EvaluationContext("u", {"user": {"id": "u-1"}})
    )
    assert details.value in ("new", "old") and details.reason == "TARGETING_MATCH"
    gone = flagd_client.get_boolean_details("gated", False)  # prerequisites do not export: left out
    assert gone.error_code == "FLAG_NOT_FOUND"

    started = time.monotonic()
    await admin.set_flag_enabled("kill", False, envs=["prod"])
    await eventually(lambda: flagd_client.get_boolean_value("kill", True) is False, timeout=5, interval=0.01)
    assert time.monotonic() - started < 1.0

    # 10,000 users: the flagd provider and confmesh's own client agree on every one.
    async with ConfigClient(server.address, environment="prod", service="orders") as client:
        await client.wait_for_version(0, timeout=5)
        differ = []
        for n in range(USERS):
            uid = f"user-{n}"
            ours = client.flags.get_str("rollout", "none", {"targetingKey": uid, "user": {"id": uid}})
            theirs = flagd_client.get_string_value(
                "rollout", "none", EvaluationContext(uid, {"user": {"id": uid}})
            )
            if ours != theirs:
                differ.append((uid, ours, theirs))
        assert not differ, f"{len(differ)} of {USERS} users differ, e.g. {differ[:3]}"


async def test_fetch_all_and_the_stream_carry_the_environment_in_flagds_schema(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put_flags("prod", {"kill": KILL})
    await admin.put_flags("staging", {"other": KILL})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        whole = await stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="prod"))
        document = json.loads(whole.flag_configuration)
        assert set(document["flags"]) == {"kill"}
        assert document["metadata"] == {"flagSetId": "prod", "version": document["metadata"]["version"]}
        assert document["flags"]["kill"]["state"] == "ENABLED"

        stream = stub.SyncFlags(
            sync_pb2.SyncFlagsRequest(), metadata=(("flagd-selector", "flagSetId=staging"),)
        )
        first = json.loads((await asyncio.wait_for(stream.read(), 5)).flag_configuration)
        assert set(first["flags"]) == {"other"}
        await admin.put_flags("prod", {"kill2": KILL})  # another environment: nothing sent
        await admin.put_flags("staging", {"more": KILL})
        second = json.loads((await asyncio.wait_for(stream.read(), 5)).flag_configuration)
        assert set(second["flags"]) == {"other", "more"}
        stream.cancel()

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "flagSetId" in (
            info.value.details() or ""
        )


def test_selectors() -> None:
    assert selected_environment("prod") == "prod"
    assert selected_environment("source=x, flagSetId=prod") == "prod"
    assert selected_environment("environment=staging") == "staging"
    for bad in ("", "source=x", "flagSetId=../etc"):
        with pytest.raises(Exception):  # noqa: B017, PT011
            selected_environment(bad)


async def test_sync_streams_follow_the_grant_and_end_when_it_is_withdrawn(tenants: Any) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put_flags("prod", {"kill": KILL})
    async with grpc.aio.insecure_channel(tenants.address) as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)

        def as_(who: str, env: str) -> Any:
            return stub.SyncFlags(sync_pb2.SyncFlagsRequest(selector=f"flagSetId={env}"), metadata=(
                ("authorization", f"Bearer {tenants.tokens[who]}"),))  # fmt: skip

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(as_("staging-reader", "prod").read(), 5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="prod"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        stream = as_("orders-reader", "prod")
        assert "kill" in json.loads((await asyncio.wait_for(stream.read(), 5)).flag_configuration)["flags"]
        async with tenants.admin("admin") as admin:
            await admin.revoke_token("orders-reader")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(stream.read(), 5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may no longer read the flags of prod" in (info.value.details() or "")

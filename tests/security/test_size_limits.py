"""One coherent set of size limits: values, etcd requests and snapshots, refused at write time with the
limit named, and a server that can always start on what etcd holds."""

from __future__ import annotations

import re

import pytest
from etcd3aio.kv import KVService

from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient, ConfigClient, InvalidArgument
from confmesh.keys import Layer
from confmesh.merge import MAX_VALUE_BYTES
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.etcd import DEFAULT_MAX_REQUEST_BYTES, Etcd
from confmesh.server.snapshot_size import MAX_SNAPSHOT_BYTES
from tests.conftest import EtcdHandle
from tests.helpers import eventually

pytestmark = pytest.mark.slow
BIG = MAX_VALUE_BYTES - 64  # a value just under the limit, once JSON-encoded


async def test_the_largest_value_can_be_overwritten_and_a_larger_one_is_refused(admin: AdminClient) -> None:
    await admin.put("blob", "a" * BIG, env="prod", service="orders")
    await admin.put("blob", "b" * BIG, env="prod", service="orders")  # value + old and new in the audit
    with pytest.raises(InvalidArgument, match=f"the limit is {MAX_VALUE_BYTES}") as info:
        await admin.put("blob", "c" * (MAX_VALUE_BYTES + 1), env="prod", service="orders")
    assert info.value.code == "value_too_large"


async def test_a_request_larger_than_etcd_takes_is_refused_naming_the_limit(admin: AdminClient) -> None:
    changes = [ChangeSpec(Layer.svc("prod", "orders"), f"part{i}", "x" * BIG) for i in range(7)]
    with pytest.raises(
        InvalidArgument, match=f"at most {DEFAULT_MAX_REQUEST_BYTES} bytes per request"
    ) as info:
        await admin.apply(changes)
    assert info.value.code == "request_too_large"
    assert (await admin.get_layer(Layer.svc("prod", "orders")))[1] == {}


async def test_etcds_own_too_large_is_invalid_argument(etcd: EtcdHandle, prefix: str) -> None:
    # A server told a larger limit than etcd's: etcd itself refuses, and that is the caller's error.
    settings = ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix,
                              etcd_max_request_bytes=64 * 1024 * 1024)  # fmt: skip
    server = ConfmeshServer(settings)
    await server.start()
    try:
        async with AdminClient(server.address) as admin:
            changes = [ChangeSpec(Layer.svc("prod", "orders"), f"part{i}", "x" * BIG) for i in range(7)]
            with pytest.raises(InvalidArgument, match="larger than etcd accepts") as info:
                await admin.apply(changes)
            assert info.value.code == "request_too_large"
    finally:
        await server.stop()


async def test_a_write_that_would_make_a_snapshot_too_large_is_refused_and_clients_keep_receiving(
    admin: AdminClient,
) -> None:
    client = ConfigClient(admin.target, environment="prod", service="orders", start_from_defaults=True)
    async with client:
        written = 0
        too_large = f"the snapshot of prod/orders .* the limit is {MAX_SNAPSHOT_BYTES}"
        refused: InvalidArgument | None = None
        for i in range(20):
            try:
                written = (await admin.put(f"part{i}", "x" * BIG, env="prod", service="orders")).revision
            except InvalidArgument as exc:
                refused = exc
                break
        assert refused is not None and re.search(too_large, refused.message), refused
        assert written and i == MAX_SNAPSHOT_BYTES // BIG  # as many as fit were accepted
        await eventually(lambda: client.version >= written, timeout=10)
        # A write to the shared defaults counts every layer of every scope it reaches.
        with pytest.raises(InvalidArgument, match="the snapshot of prod/orders") as info:
            await admin.put("shared", "y" * BIG)
        assert info.value.code == "snapshot_too_large"
        small = await admin.put("small", 1, env="prod", service="orders")
        await eventually(lambda: client.version >= small.revision, timeout=10)
        assert client.raw["small"] == 1


async def test_a_server_starts_on_what_etcd_holds_however_large(etcd: EtcdHandle, prefix: str) -> None:
    # Written out of band, past every limit: 10 values of 450 KB in one layer (a 4.5 MB list answer).
    raw = Etcd([etcd.endpoint])
    await raw.connect()
    try:
        for i in range(10):
            key, value = f"{prefix}/config/service/prod/huge/v{i}", b'"' + b"z" * 450_000 + b'"'
            await raw.txn([], [KVService.txn_op_put(key, value)])
    finally:
        await raw.close()
    server = ConfmeshServer(
        ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    )
    await server.start()
    try:
        assert len(server.store.entries(Layer.svc("prod", "huge"))) == 10
    finally:
        await server.stop()

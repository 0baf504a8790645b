"""AdminService on the in-memory source, no etcd: every RPC mixin (admin_reads, admin_flags,
admin_schemas, admin_rollouts, admin_tokens, admin_writes, admin_history, admin_changes,
admin_audit) answers reads from the plane and the store, refuses bad or denied writes before
anything reaches etcd, and the auto-abort guard aborts exactly when too many canaries NACK. The
same RPCs run on real etcd in tests/integration and tests/security; this module is the fast,
etcd-free half.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from confmesh import errors
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.access import Access, Grant, Role, new_token
from confmesh.server.admin_service import AdminService
from confmesh.server.audit import AuditEntry, AuditFilter
from confmesh.server.console.bridge import call
from confmesh.server.fleet import FleetView
from confmesh.server.ledger import Ledger
from confmesh.server.memory_source import MemorySource
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import FLEET, ROLLOUTS, TOKENS, server_store
from confmesh.server.rollout_guard import RolloutGuard
from confmesh.server.rollouts import Rollout, RolloutState
from confmesh.server.schemas import SchemaRecord
from confmesh.server.usage import FlagUsageStore
from confmesh.server.writer import Writer
from confmesh.v1 import admin_pb2
from confmesh.wire import layer_to_pb

LAYOUT = KeyLayout("/mem")
SCOPE = Scope("prod", "orders")
FLAG = {"variants": {"on": True, "off": False}, "default_variant": "off"}


class NoEtcd:
    """An etcd that must not be reached: every call fails the test."""

    max_request_bytes = 1 << 20

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"etcd.{name} was reached")


class RecordingEtcd:
    """Only what the rollout guard's abort needs: a transaction that succeeds and is recorded."""

    def __init__(self) -> None:
        self.puts: dict[str, bytes] = {}

    async def txn(self, compares: list[Any], ops: list[Any]) -> Any:
        for op in ops:
            self.puts[op.request_put.key.decode()] = op.request_put.value
        return SimpleNamespace(succeeded=True, header=SimpleNamespace(revision=99))


@dataclass
class Admin:
    source: MemorySource
    plane: SnapshotPlane
    ledger: Ledger
    service: AdminService

    async def __call__(self, method: str, request: Any, token: str = "") -> Any:
        return await call(getattr(self.service, method), request, token, "ipv4:127.0.0.1:1")


def build(policy: Path | None = None) -> Admin:
    store = server_store(LAYOUT)
    plane = SnapshotPlane(store)
    source = MemorySource(store, plane.apply)
    source.write(
        {
            LAYOUT.config_key(Layer.defaults(), "pool"): b"10",
            LAYOUT.config_key(Layer.env("prod"), "db.host"): b'"db.prod"',
            LAYOUT.config_key(Layer.svc("prod", "orders"), "pool"): b"20",
            LAYOUT.config_key(Layer.flags("prod"), "checkout"): json.dumps(FLAG).encode(),
            LAYOUT.schema_key(SCOPE): SchemaRecord({"type": "object"}, "ops").encode(),
        }
    )
    source.start()
    ledger = Ledger(server_id="me")
    fleet = FleetView(ledger, store.records(FLEET), "me")
    tokens = lambda: store.records(TOKENS)  # noqa: E731
    access = Access(tokens, str(policy)) if policy else Access(tokens)
    writer = Writer(NoEtcd(), LAYOUT)  # type: ignore[arg-type]
    service = AdminService(writer, plane, fleet, store, source, FlagUsageStore(), server_id="me",
                           endpoints="mem", access=access)  # fmt: skip
    return Admin(source, plane, ledger, service)


@pytest.fixture
async def admin() -> Admin:
    return build()


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


async def test_reads_answer_from_the_plane_and_the_store(admin: Admin) -> None:
    resolved = await admin("Resolve", admin_pb2.ResolveRequest(environment="prod", service="orders"))
    as_dict = json_format.MessageToDict(resolved)
    assert json.dumps(as_dict).count("db.prod") >= 1 and resolved.version > 0
    explained = await admin(
        "Resolve", admin_pb2.ResolveRequest(environment="prod", service="orders", key="pool")
    )
    assert "20" in str(explained)

    flags = await admin("GetFlags", admin_pb2.GetFlagsRequest(environment="prod"))
    assert set(flags.flags.fields) == {"checkout"}
    schema = await admin("GetSchema", admin_pb2.GetSchemaRequest(environment="prod", service="orders"))
    assert schema.schema.fields["type"].string_value == "object"
    status = await admin("GetStatus", admin_pb2.GetStatusRequest())
    assert (status.server_id, status.revision, status.stale) == ("me", admin.source.revision, False)
    assert list(status.replicas) == ["me"] and list(status.instances) == []
    assert (await admin("ListRollouts", admin_pb2.ListRolloutsRequest())).rollouts == []
    assert (await admin("ListTokens", admin_pb2.ListTokensRequest())).tokens == []


async def test_a_missing_schema_or_unknown_environment_is_a_clear_error(admin: Admin) -> None:
    with pytest.raises(errors.NotFound):
        await admin("GetSchema", admin_pb2.GetSchemaRequest(environment="prod", service="billing"))
    with pytest.raises(errors.InvalidArgument):
        await admin("GetFlags", admin_pb2.GetFlagsRequest(environment="no such env!"))


@pytest.mark.parametrize(
    ("method", "request_of"),
    [
        ("Put", lambda: admin_pb2.PutRequest(key="bad key!", value=struct_pb2.Value(number_value=1))),
        ("Delete", lambda: admin_pb2.DeleteRequest(key="")),
        ("Apply", lambda: admin_pb2.ApplyRequest()),
        ("PutFlags", lambda: admin_pb2.PutFlagsRequest(environment="prod", flags=struct({"x": {"on": 1}}))),
        ("DeleteFlag", lambda: admin_pb2.DeleteFlagRequest(environment="", key="checkout")),
        ("PutSchema", lambda: admin_pb2.PutSchemaRequest(environment="prod", service="orders",
                                                        schema=struct({"type": "no-such-type"}))),
        ("StartRollout", lambda: admin_pb2.StartRolloutRequest(name="r", environment="prod", service="orders",
                                                              percent=150)),
        ("Rollback", lambda: admin_pb2.RollbackRequest(to_version=-1)),
        ("Revert", lambda: admin_pb2.RevertRequest(environment="prod", since_seconds=-5)),
        ("CreateToken", lambda: admin_pb2.CreateTokenRequest(name="")),
        ("ProposeChange", lambda: admin_pb2.ProposeChangeRequest(title="")),
        ("ListAudit", lambda: admin_pb2.ListAuditRequest(limit=-1)),
    ],
)  # fmt: skip
async def test_bad_writes_are_refused_before_etcd_is_reached(
    admin: Admin, method: str, request_of: Callable[[], Any]
) -> None:
    with pytest.raises(errors.ConfmeshError) as refused:
        await admin(method, request_of())
    assert not isinstance(refused.value, errors.Unavailable), refused.value


async def test_denied_callers_get_permission_denied_before_etcd(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    admin = build(policy)
    record, token = new_token("reader", Grant(role=Role.READER, scopes=("staging/*",)), "test")
    admin.source.put(LAYOUT.token_root + record.id, record.encode())
    staging = layer_to_pb(Layer.env("staging"))
    for method, request in [
        ("Resolve", admin_pb2.ResolveRequest(environment="prod", service="orders")),
        ("GetFlags", admin_pb2.GetFlagsRequest(environment="prod")),
        ("Put", admin_pb2.PutRequest(layer=staging, key="x", value=struct_pb2.Value(number_value=1))),
        ("CreateToken", admin_pb2.CreateTokenRequest(name="t")),
        ("ListTokens", admin_pb2.ListTokensRequest()),
    ]:
        with pytest.raises(errors.PermissionDenied):
            await admin(method, request, token=token)
    allowed = await admin(
        "Resolve", admin_pb2.ResolveRequest(environment="staging", service="x"), token=token
    )
    assert allowed.version > 0
    with pytest.raises(errors.Unauthenticated):
        await admin("Resolve", admin_pb2.ResolveRequest(environment="staging", service="x"), token="cmt_a.b")


async def test_the_guard_aborts_a_rollout_once_too_many_canaries_nack() -> None:
    admin = build()
    rollout = Rollout("bigger-pool", SCOPE, {"pool": 40}, percent=100, max_nack_rate=0.5)
    admin.source.put(LAYOUT.rollout_key(SCOPE), rollout.encode())
    etcd = RecordingEtcd()
    store = admin.service.store
    guard = RolloutGuard(etcd, LAYOUT, store, admin.plane, admin.service.fleet, actor="guard")  # type: ignore[arg-type]
    version = admin.plane.canary(SCOPE).version
    for i in range(4):
        admin.ledger.connect(i, instance_id=f"i{i}", scope=SCOPE, peer="p", labels={}, known_version=0,
                             known_hash="")  # fmt: skip
        admin.ledger.sent(i, version)

    for i in range(2):  # half NACK: not more than the limit
        admin.ledger.nack(i, version, "h", "refused", ["pool"])
    await guard.check()
    assert etcd.puts == {}

    admin.ledger.nack(2, version, "h", "refused", ["pool"])
    await guard.check()
    aborted = Rollout.decode(etcd.puts[LAYOUT.rollout_key(SCOPE)])
    assert aborted.state is RolloutState.ABORTED and "3 of 4" in aborted.abort_reason
    assert [k for k in etcd.puts if k.startswith(LAYOUT.audit_root)]
    assert store.records(ROLLOUTS)[SCOPE][0].active  # the store changes when etcd says so, not before


def test_an_audit_entry_round_trips_and_filters() -> None:
    entry = AuditEntry("alice", "more headroom", "write")
    entry.put(Layer.svc("prod", "orders"), "pool", 10, 20, existed=True)
    entry.delete(Layer.env("staging"), "debug", True)
    decoded = json.loads(entry.encode())
    assert decoded["actor"] == "alice" and len(decoded["changes"]) == 2
    assert entry.key(LAYOUT).startswith(LAYOUT.audit_root)
    assert AuditFilter(environment="prod").matches(decoded)
    assert AuditFilter(service="orders", key_prefix="po").matches(decoded)
    assert not AuditFilter(actor="bob").matches(decoded)
    assert not AuditFilter(environment="dev").matches(decoded)

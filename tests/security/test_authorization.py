"""The authorization matrix: every RPC of every service, called by every kind of identity.

Generated from the proto's method list: an RPC with no rule (access.RULES) or
no request here fails the test, so a new RPC cannot ship without both. Each
cell is an explicit expectation, written out by hand below, not derived from
the code under test. Every answer is also searched for the plaintext of a
secret seeded in a scope the caller may not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2

from confmesh.changes import ChangeSpec
from confmesh.keys import Layer
from confmesh.server.access import RULES, Rule
from confmesh.server.app import served_methods
from confmesh.v1 import admin_pb2, config_pb2, relay_pb2
from confmesh.wire import layer_to_pb, to_struct, to_value
from tests.conftest import TENANT_GRANTS, Tenants
from tests.helpers import eventually

SECRET = "payments-plaintext-7f3a91"  # pragma: allowlist secret
ORDERS, PAYMENTS = ("prod", "orders"), ("prod", "payments")
IDENTITIES = (*TENANT_GRANTS, "anonymous")
OWNERS = ("admin", "payments-service")  # the identities that may read prod/payments' secret
FLAG = {"variants": {"on": True, "off": False}, "default_variant": "off"}

# Who may call each kind of rule, for a target in prod/orders and one in prod/payments.
BOTH, NONE = {ORDERS, PAYMENTS}, set()
EXPECTED: dict[Rule, dict[str, set[tuple[str, str]]]] = {
    Rule.WRITE_LAYERS: {"admin": BOTH, "orders-writer": {ORDERS}},
    Rule.READ_SCOPE: {"admin": BOTH, "orders-writer": {ORDERS}, "orders-reader": {ORDERS},
                      "orders-service": {ORDERS}, "payments-service": {PAYMENTS}},
    Rule.READ_LAYER: {"admin": BOTH, "orders-writer": {ORDERS}, "orders-reader": {ORDERS}},
    Rule.READ_FLAGS: {"admin": BOTH, "orders-writer": BOTH, "orders-reader": BOTH,
                      "orders-service": BOTH, "payments-service": BOTH},
    Rule.WATCH_SCOPE: {"admin": BOTH, "orders-writer": {ORDERS}, "orders-reader": {ORDERS},
                       "orders-service": {ORDERS}, "payments-service": {PAYMENTS}},
    Rule.OPERATE: {name: BOTH for name in TENANT_GRANTS if not name.endswith("-service")},
    Rule.ADMIN: {"admin": BOTH},
    Rule.RELAY: {"admin": BOTH, "orders-writer": {ORDERS}, "orders-reader": {ORDERS}},
}  # fmt: skip
# Methods whose target is wider than the scope they name.
OVERRIDES: dict[str, dict[str, set[tuple[str, str]]]] = {
    # Flags are per environment: a writer with flags "prod" changes them from either target.
    **{m: {"admin": BOTH, "orders-writer": BOTH} for m in ("PutFlags", "DeleteFlag", "SetFlagEnabled")},
    # A revert restores every layer of the environment: only a grant covering all of prod.
    "Revert": {"admin": BOTH},
    # flagd sync metadata is empty; without a selector it asks only that the caller be someone.
    "GetMetadata": {name: BOTH for name in TENANT_GRANTS},
    # The seeded change requests are the admin's own, and nobody reviews their own change.
    "ReviewChange": {"orders-writer": {ORDERS}},
    # Only a change's author or an admin withdraws it.
    "CancelChange": {"admin": BOTH},
}
# The change requests seed() proposes, per target (GetChange and the transitions act on them).
CHANGES: dict[tuple[str, str], str] = {}

_n = 0


def _unique() -> str:
    global _n
    _n += 1
    return f"m{_n}"


def _ctx() -> admin_pb2.ChangeContext:
    return admin_pb2.ChangeContext(reason="matrix")


def requests(env: str, svc: str) -> dict[str, Callable[[], Message]]:
    layer = layer_to_pb(Layer.svc(env, svc))
    return {
        "Put": lambda: admin_pb2.PutRequest(layer=layer, key=_unique(), value=to_value(1), context=_ctx()),
        "Delete": lambda: admin_pb2.DeleteRequest(layer=layer, key="nope", context=_ctx()),
        "Apply": lambda: admin_pb2.ApplyRequest(
            changes=[admin_pb2.Change(layer=layer, key=_unique(), value=to_value(2))], context=_ctx()
        ),
        "Resolve": lambda: admin_pb2.ResolveRequest(environment=env, service=svc, key="db"),
        "GetStatus": lambda: admin_pb2.GetStatusRequest(),
        "GetScopeStatus": lambda: admin_pb2.GetScopeStatusRequest(environment=env, service=svc),
        "PutFlags": lambda: admin_pb2.PutFlagsRequest(environment=env, flags=to_struct({_unique(): FLAG})),
        "DeleteFlag": lambda: admin_pb2.DeleteFlagRequest(environment=env, key="nope", context=_ctx()),
        "SetFlagEnabled": lambda: admin_pb2.SetFlagEnabledRequest(
            environments=[env], key="seeded", enabled=True, context=_ctx()
        ),
        "GetFlags": lambda: admin_pb2.GetFlagsRequest(environment=env),
        "GetFlagUsage": lambda: admin_pb2.GetFlagUsageRequest(),
        "ListAudit": lambda: admin_pb2.ListAuditRequest(limit=1000),
        "CreateToken": lambda: admin_pb2.CreateTokenRequest(
            name=_unique(), grant=admin_pb2.Grant(role="reader", scopes=[f"{env}/{svc}"]), context=_ctx()
        ),
        "ListTokens": lambda: admin_pb2.ListTokensRequest(),
        "RevokeToken": lambda: admin_pb2.RevokeTokenRequest(name="no-such-token", context=_ctx()),
        "PutSchema": lambda: admin_pb2.PutSchemaRequest(
            environment=env, service=svc, schema=to_struct({"type": "object"}), context=_ctx()
        ),
        "GetSchema": lambda: admin_pb2.GetSchemaRequest(environment=env, service=svc),
        "DeleteSchema": lambda: admin_pb2.DeleteSchemaRequest(environment=env, service=svc, context=_ctx()),
        "Rollback": lambda: admin_pb2.RollbackRequest(layer=layer, to_version=1, context=_ctx()),
        "Revert": lambda: admin_pb2.RevertRequest(environment=env, since_seconds=1, context=_ctx()),
        "GetLayer": lambda: admin_pb2.GetLayerRequest(layer=layer),
        "StartRollout": lambda: admin_pb2.StartRolloutRequest(
            name=_unique(), environment=env, service=svc, set=to_struct({"r": 1}), percent=10
        ),
        "UpdateRollout": lambda: admin_pb2.UpdateRolloutRequest(environment=env, service=svc, percent=20),
        "PromoteRollout": lambda: admin_pb2.RolloutRequest(environment=env, service=svc),
        "AbortRollout": lambda: admin_pb2.RolloutRequest(environment=env, service=svc),
        "ListRollouts": lambda: admin_pb2.ListRolloutsRequest(),
        "GetSnapshot": lambda: config_pb2.GetSnapshotRequest(environment=env, service=svc),
        "DescribeScope": lambda: config_pb2.DescribeScopeRequest(environment=env, service=svc),
        "Watch": lambda: config_pb2.WatchRequest(
            subscribe=config_pb2.Subscribe(environment=env, service=svc, instance_id=_unique())
        ),
        "Mirror": lambda: relay_pb2.MirrorRequest(
            hello=relay_pb2.MirrorHello(relay_id=_unique(), scopes=[f"{env}/{svc}"])
        ),
        "SyncFlags": lambda: sync_pb2.SyncFlagsRequest(selector=f"flagSetId={env}"),
        "FetchAllFlags": lambda: sync_pb2.FetchAllFlagsRequest(selector=env),
        "GetMetadata": lambda: sync_pb2.GetMetadataRequest(),
        "ProposeChange": lambda: admin_pb2.ProposeChangeRequest(
            changes=[admin_pb2.Change(layer=layer, key=_unique(), value=to_value(3))], context=_ctx()
        ),
        "GetChange": lambda: admin_pb2.ChangeRef(id=CHANGES[(env, svc)]),
        "ListChanges": lambda: admin_pb2.ListChangesRequest(),
        "ReviewChange": lambda: admin_pb2.ReviewChangeRequest(id=CHANGES[(env, svc)], approve=True),
        "ScheduleChange": lambda: admin_pb2.ScheduleChangeRequest(id=CHANGES[(env, svc)], context=_ctx()),
        "ApplyChange": lambda: admin_pb2.ChangeRef(id=CHANGES[(env, svc)], context=_ctx()),
        "CancelChange": lambda: admin_pb2.ChangeRef(id=CHANGES[(env, svc)], context=_ctx()),
    }


def expected(method: str, identity: str, target: tuple[str, str]) -> bool:
    name = method.rsplit("/", 1)[1]
    table = OVERRIDES.get(name) or EXPECTED[RULES[method]]
    return target in table.get(identity, NONE)


async def call(
    channel: grpc.aio.Channel, method: str, request: Message, token: str
) -> tuple[grpc.StatusCode, bytes]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        if method.endswith("/SyncFlags"):
            sync = channel.unary_stream(method)(request.SerializeToString(), metadata=metadata)
            try:
                first = await asyncio.wait_for(sync.read(), 10)
            finally:
                sync.cancel()
            return grpc.StatusCode.OK, first if isinstance(first, bytes) else b""
        if method.endswith(("/Watch", "/Mirror")):
            stream = channel.stream_stream(method)

            async def outbox() -> AsyncIterator[bytes]:
                yield request.SerializeToString()
                await asyncio.sleep(30)

            watch = stream(outbox(), metadata=metadata)
            try:
                first = await asyncio.wait_for(watch.read(), 10)
            finally:
                watch.cancel()
            return grpc.StatusCode.OK, first if isinstance(first, bytes) else b""
        answer = await channel.unary_unary(method)(request.SerializeToString(), metadata=metadata, timeout=10)
        return grpc.StatusCode.OK, answer
    except grpc.aio.AioRpcError as exc:
        return exc.code(), (exc.details() or "").encode()


async def seed(tenants: Tenants) -> None:
    """A secret, an audit record, a rollout, a NACKing instance and flags in prod/payments."""
    async with tenants.admin("admin") as admin:
        await admin.put("db.password", SECRET, env="prod", service="payments")
        await admin.put("db.host", "orders-db", env="prod", service="orders")
        await admin.put_flags("prod", {"seeded": FLAG})
        await admin.start_rollout("r0", "prod", "payments", set={"db.password": SECRET + "-next"}, percent=10)
        for env, svc in (ORDERS, PAYMENTS):
            value = SECRET + "-cr" if (env, svc) == PAYMENTS else "orders-cr"
            change = await admin.propose_change([ChangeSpec(Layer.svc(env, svc), "db.password", value)])
            CHANGES[(env, svc)] = change.id
    channel = grpc.aio.insecure_channel(tenants.address)
    watch = channel.stream_stream("/confmesh.v1.ConfigService/Watch")
    sub = config_pb2.WatchRequest(subscribe=config_pb2.Subscribe(
        environment="prod", service="payments", instance_id="pay-1", labels={"note": SECRET}
    ))  # fmt: skip
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    await outbox.put(sub.SerializeToString())

    async def send() -> AsyncIterator[bytes]:
        while True:
            yield await outbox.get()

    stream = watch(send(), metadata=(("authorization", f"Bearer {tenants.tokens['payments-service']}"),))
    first = config_pb2.WatchResponse.FromString(await stream.read())
    nack = config_pb2.Nack(version=first.snapshot.version, hash=first.snapshot.hash, error=f"bad {SECRET}")
    await outbox.put(config_pb2.WatchRequest(nack=nack).SerializeToString())
    await eventually(lambda: any(r.last_nack for r in tenants.server.ledger.records()), timeout=5)
    tenants.keepalive = (channel, stream)  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_every_rpc_is_allowed_or_denied_by_an_explicit_rule(tenants: Tenants) -> None:
    methods = served_methods()
    assert not [m for m in methods if m not in RULES], "an RPC without an authorization rule"
    for target in (ORDERS, PAYMENTS):
        missing = [m for m in methods if m.rsplit("/", 1)[1] not in requests(*target)]
        assert not missing, f"no matrix request for {missing}"
    await seed(tenants)
    wrong: list[str] = []
    leaks: list[str] = []
    async with grpc.aio.insecure_channel(tenants.address) as channel:
        for method in methods:
            for identity in IDENTITIES:
                token = tenants.tokens.get(identity, "")
                for target in (ORDERS, PAYMENTS):
                    code, answer = await call(channel, method, requests(*target)[method.rsplit("/", 1)[1]](),
                                              token)  # fmt: skip
                    denied = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                    want = expected(method, identity, target)
                    cell = f"{method} as {identity} on {'/'.join(target)}: {code.name}"
                    if want == denied or (
                        identity == "anonymous" and code != grpc.StatusCode.UNAUTHENTICATED
                    ):
                        wrong.append(f"{cell} ({'expected allowed' if want else 'expected denied'})")
                    if identity not in OWNERS and SECRET.encode() in answer:
                        leaks.append(cell)
    assert not wrong, "\n".join(wrong)
    assert not leaks, "the out-of-scope secret's plaintext was in:\n" + "\n".join(leaks)


def test_every_rule_is_named_in_the_matrix() -> None:
    confmesh = {m for m in RULES if m.startswith(("/confmesh.", "/flagd."))}
    assert confmesh == set(served_methods())
    assert {RULES[m] for m in confmesh} <= set(EXPECTED)
    assert all(rule is Rule.PUBLIC for m, rule in RULES.items() if m not in confmesh)

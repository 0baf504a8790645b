"""Change requests on a policy-enforcing server: approval rules, review, apply, staleness, schedule."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient
from confmesh.keys import KeyLayout, Layer
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.change_requests import MAX_TITLE
from confmesh.server.record_kinds import CHANGES, server_store
from confmesh.v1 import admin_pb2
from tests.conftest import Tenants
from tests.helpers import eventually

FLAG = {"variants": {"on": True, "off": False}, "default_variant": "on"}
OPEN, APPROVED = admin_pb2.CHANGE_STATE_OPEN, admin_pb2.CHANGE_STATE_APPROVED
APPLIED, FAILED = admin_pb2.CHANGE_STATE_APPLIED, admin_pb2.CHANGE_STATE_FAILED


@pytest.fixture
def policy_text() -> str:
    return """
identities: {}
approvals:
  - name: prod
    scopes: ["prod", "prod/*"]
    flags: ["prod"]
    approvers: 1
"""


@pytest.fixture
async def people(tenants: Tenants) -> AsyncIterator[dict[str, AdminClient]]:
    """Clients for the author (orders-writer), a second orders writer, an admin, a reader."""
    async with tenants.admin("admin") as admin:
        second = await admin.create_token("orders-writer-2", "writer", scopes=["prod/orders"], flags=["prod"])
        admin2 = await admin.create_token("admin-2", "admin")
    clients = {
        "author": tenants.admin("orders-writer"),
        "admin": tenants.admin("admin"),
        "reader": tenants.admin("orders-reader"),
        "staging": tenants.admin("staging-writer"),
        "second": AdminClient(tenants.address, token=second, actor="orders-writer-2"),
        "admin2": AdminClient(tenants.address, token=admin2, actor="admin-2"),
    }
    for client in clients.values():
        await client.__aenter__()
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.close()


def svc(key: str, value: object) -> ChangeSpec:
    return ChangeSpec(Layer.svc("prod", "orders"), key, value)


async def test_direct_writes_to_layers_under_an_approval_rule_are_refused(
    people: dict[str, AdminClient],
) -> None:
    with pytest.raises(errors.FailedPrecondition) as refused:
        await people["author"].put("db.pool", 20, env="prod", service="orders")
    assert refused.value.code == "approval_required" and "confmesh change propose" in refused.value.message
    with pytest.raises(errors.FailedPrecondition):  # admins too: the rule binds every identity
        await people["admin"].put("db.pool", 20, env="prod")
    with pytest.raises(errors.FailedPrecondition):
        await people["admin"].put_flags("prod", {"checkout": FLAG})
    with pytest.raises(errors.FailedPrecondition):
        await people["admin"].start_rollout("r1", "prod", "orders", set={"a": 1}, percent=10)
    await people["staging"].put("db.pool", 20, env="staging", service="orders")  # no rule for staging

    # The kill switch is the emergency the rule allows by default; turning a flag on is not.
    change = await people["author"].propose_change([ChangeSpec(Layer.flags("prod"), "checkout", FLAG)])
    await people["admin"].review_change(change.id, approve=True)
    await people["author"].apply_change(change.id)
    await people["author"].set_flag_enabled("checkout", False, envs=["prod"])
    with pytest.raises(errors.FailedPrecondition):
        await people["author"].set_flag_enabled("checkout", True, envs=["prod"])


async def test_a_rule_protects_its_scopes_from_the_defaults_layer_too(people: dict[str, AdminClient]) -> None:
    """`defaults` flows into every prod service: a rule over prod covers a write to it (and the dry run
    says it needs the approval), while a rule only over staging services would not."""
    await people["staging"].put(
        "db.pool", 20, env="staging", service="orders"
    )  # prod/orders and a known scope
    with pytest.raises(errors.FailedPrecondition) as refused:
        await people["admin"].put("db.pool", 99)
    assert refused.value.code == "approval_required" and "defaults" in refused.value.message
    dry = await people["admin"].propose_change([ChangeSpec(Layer.defaults(), "db.pool", 99)], dry_run=True)
    assert dry.approvals_required == 1
    change = await people["admin"].propose_change([ChangeSpec(Layer.defaults(), "db.pool", 99)])
    await people["admin2"].review_change(change.id, approve=True)
    await people["admin"].apply_change(change.id)
    assert (await people["admin"].resolve("prod", "orders", "db.pool")).value == 99


async def test_the_kill_bypass_only_turns_flags_off(people: dict[str, AdminClient]) -> None:
    """A kill serves the flag's off variant: under an approval rule, one that would serve true is
    refused (it would switch something on with no review); killing a killed flag writes nothing."""
    inverted = {"variants": {"on": True, "off": False}, "default_variant": "off", "off_variant": "on"}
    change = await people["author"].propose_change(
        [
            ChangeSpec(Layer.flags("prod"), "inverted", inverted),
            ChangeSpec(Layer.flags("prod"), "checkout", FLAG),
        ]
    )
    await people["admin"].review_change(change.id, approve=True)
    await people["author"].apply_change(change.id)
    with pytest.raises(errors.FailedPrecondition) as refused:
        await people["author"].set_flag_enabled("inverted", False, envs=["prod"])
    assert refused.value.code == "approval_required" and "would serve true" in refused.value.message
    first = await people["author"].set_flag_enabled("checkout", False, envs=["prod"])
    again = await people["author"].set_flag_enabled("checkout", False, envs=["prod"])
    assert again.revision == first.revision and again.changed == []


def test_which_layers_a_rule_covers() -> None:
    from confmesh.server.access import ApprovalRule

    prod = ApprovalRule(scopes=("prod/orders",))
    assert (
        prod.covers(Layer.defaults())
        and prod.covers(Layer.env("prod"))
        and prod.covers(Layer.svc("prod", "orders"))
    )
    assert not prod.covers(Layer.env("staging")) and not prod.covers(Layer.svc("prod", "payments"))
    assert not prod.covers(Layer.flags("prod"))
    flags_only = ApprovalRule(flags=("prod",))
    assert not flags_only.covers(Layer.defaults()) and flags_only.covers(Layer.flags("prod"))


async def test_a_change_needs_another_identitys_approval_then_applies_once(
    people: dict[str, AdminClient],
) -> None:
    author, second = people["author"], people["second"]
    change = await author.propose_change(
        [svc("db.pool", 20), ChangeSpec(Layer.flags("prod"), "checkout", FLAG)],
        title="bigger pool, checkout flag", reason="black friday",
    )  # fmt: skip
    assert change.state == OPEN and change.approvals_required == 1 and change.author == "token:orders-writer"
    assert {(d.key, d.op) for d in change.diff} == {("db.pool", "put"), ("checkout", "put")}
    assert [(s.environment, s.service, list(s.changed_keys)) for s in change.scopes] == [
        ("prod", "orders", ["db.pool"])
    ]
    assert [(f.environment, list(f.changed_flags), f.valid) for f in change.flags] == [
        ("prod", ["checkout"], True)
    ]

    with pytest.raises(errors.FailedPrecondition) as early:
        await author.apply_change(change.id)
    assert early.value.code == "not_approved"
    with pytest.raises(errors.PermissionDenied) as own:
        await author.review_change(change.id, approve=True)
    assert own.value.code == "own_change"
    with pytest.raises(errors.PermissionDenied):
        await people["reader"].review_change(change.id, approve=True)
    assert (await second.change(change.id)).state == OPEN
    (listed,) = await second.changes(states=["open"])
    assert listed.id == change.id and not listed.diff and not listed.scopes  # a list stays cheap

    approved = await second.review_change(change.id, approve=True, comment="lgtm")
    assert approved.state == APPROVED and [r.identity for r in approved.reviews] == ["token:orders-writer-2"]
    applied = await author.apply_change(change.id)
    assert (
        applied.state == APPLIED
        and applied.applied_revision > 0
        and applied.applied_by == "token:orders-writer"
    )
    assert (await author.resolve("prod", "orders", "db.pool")).value == 20
    with pytest.raises(errors.FailedPrecondition) as again:
        await author.apply_change(change.id)
    assert again.value.code == "change_finished"

    records = (await people["admin"].audit(env="prod", service="orders", limit=20)).records
    applied_records = [r for r in records if r.source.startswith(f"ChangeRequest {change.id}")]
    assert len(applied_records) == 1
    assert (
        applied_records[0].actor == "token:orders-writer"
        and "token:orders-writer-2" in applied_records[0].source
    )


async def test_a_change_proposed_before_another_write_to_its_layers_cannot_apply(
    people: dict[str, AdminClient],
) -> None:
    author, second = people["author"], people["second"]
    first = await author.propose_change([svc("timeout", 5)])
    other = await author.propose_change([svc("timeout", 9)])
    for change in (first, other):
        await second.review_change(change.id, approve=True)
    await author.apply_change(other.id)
    assert (await author.change(first.id)).stale
    with pytest.raises(errors.FailedPrecondition) as stale:
        await author.apply_change(first.id)
    assert stale.value.code == "change_stale" and "service/prod/orders" in stale.value.message
    failed = await author.change(first.id)
    assert failed.state == FAILED and "propose it again" in failed.error
    assert (await author.resolve("prod", "orders", "timeout")).value == 9


async def test_the_blast_radius_shows_each_scope_and_its_schemas_verdict(
    people: dict[str, AdminClient],
) -> None:
    admin, author = people["admin"], people["author"]
    schema = {
        "type": "object",
        "properties": {"db": {"type": "object", "properties": {"pool": {"maximum": 50}}}},
    }
    await admin.put_schema("prod", "orders", schema)
    await admin.put_schema("prod", "payments", {"type": "object"})
    change = await admin.propose_change([ChangeSpec(Layer.env("prod"), "db.pool", 100)])
    scopes = {(s.environment, s.service): s for s in change.scopes}
    assert set(scopes) == {("prod", "orders"), ("prod", "payments")}
    orders = scopes[("prod", "orders")]
    assert orders.has_schema and not orders.schema_accepts and orders.schema_field == "db.pool"
    assert scopes[("prod", "payments")].schema_accepts

    # A reader of prod/orders reads an environment-layer change, but not payments' verdict.
    seen = await people["reader"].change(change.id)
    assert [s.service for s in seen.scopes] == ["orders"] and seen.scopes_not_shown == 1

    with pytest.raises(errors.PermissionDenied):  # approving needs the right to write every layer
        await author.review_change(change.id, approve=True)
    await people["admin2"].review_change(change.id, approve=True)
    with pytest.raises(errors.InvalidArgument) as refused:
        await admin.apply_change(change.id)
    assert refused.value.code == "schema_violation"
    assert not (await admin.resolve("prod", "orders", "db.pool")).found
    assert (await admin.change(change.id)).state == APPROVED  # nothing was written, the change stays


async def test_bad_proposals_are_refused_and_a_dry_run_stores_nothing(people: dict[str, AdminClient]) -> None:
    author = people["author"]
    with pytest.raises(errors.InvalidArgument):
        await author.propose_change([svc("a", 1)], title="x" * (MAX_TITLE + 1))
    with pytest.raises(errors.InvalidArgument):
        await author.propose_change([svc(f"k{i}", i) for i in range(1001)])
    with pytest.raises(errors.InvalidArgument):
        await author.propose_change([svc("a", 1)], apply_at=time.time() + 400 * 86400)
    with pytest.raises(errors.InvalidArgument):
        await author.propose_change([])
    with pytest.raises(errors.NotFound):
        await author.propose_change([ChangeSpec(Layer.svc("prod", "orders"), "absent", delete=True)])
    with pytest.raises(errors.InvalidArgument):
        await author.propose_change([ChangeSpec(Layer.flags("prod"), "broken", {"variants": {}})])
    with pytest.raises(errors.PermissionDenied):
        await author.propose_change([ChangeSpec(Layer.svc("prod", "payments"), "a", 1)])
    with pytest.raises(errors.InvalidArgument):
        await author.change("../../etc")
    with pytest.raises(errors.InvalidArgument) as too_big:  # each value fits; together they do not
        await author.propose_change([svc(f"blob{i}", "x" * 200_000) for i in range(6)])
    assert too_big.value.code == "change_too_large"
    with pytest.raises(errors.InvalidArgument):
        await author.changes(states=["open"] * 7)
    preview = await author.propose_change([svc("a", 1)], dry_run=True)
    assert preview.state == OPEN and [d.key for d in preview.diff] == ["a"]
    assert await author.changes() == []


async def test_only_the_author_or_an_admin_cancels(people: dict[str, AdminClient]) -> None:
    change = await people["author"].propose_change([svc("a", 1)])
    with pytest.raises(errors.PermissionDenied):
        await people["second"].cancel_change(change.id)
    cancelled = await people["author"].cancel_change(change.id, reason="not now")
    assert cancelled.state == admin_pb2.CHANGE_STATE_CANCELLED and "not now" in cancelled.error
    with pytest.raises(errors.FailedPrecondition):
        await people["second"].review_change(change.id, approve=True)


async def test_a_rollout_under_an_approval_rule_starts_through_a_change_request(
    people: dict[str, AdminClient],
) -> None:
    author, second = people["author"], people["second"]
    change = await author.propose_change(
        rollout={"name": "bigpool", "env": "prod", "service": "orders", "set": {"db.pool": 30}, "percent": 10}
    )
    assert change.rollout.name == "bigpool" and [d.key for d in change.diff] == ["db.pool"]
    await second.review_change(change.id, approve=True)
    await author.apply_change(change.id)
    assert [(r.name, r.state) for r in await author.rollouts()] == [("bigpool", "active")]
    await author.promote_rollout("prod", "orders")  # advancing an approved rollout needs no new approval
    assert (await author.resolve("prod", "orders", "db.pool")).value == 30


async def test_a_scheduled_change_applies_at_its_time_exactly_once_across_replicas(
    people: dict[str, AdminClient], tenants: Tenants, prefix: str
) -> None:
    settings = tenants.server.settings
    replica = ConfmeshServer(
        ServerSettings(listen="127.0.0.1:0", etcd_endpoints=settings.etcd_endpoints, prefix=prefix,
                       policy_file=settings.policy_file, heartbeat_interval=1.0)
    )  # fmt: skip
    await replica.start()
    try:
        author, second = people["author"], people["second"]
        at = time.time() + 1.5
        change = await author.propose_change([svc("sale", True)], apply_at=at)
        await second.review_change(change.id, approve=True)
        await asyncio.sleep(0.5)
        pending = await author.change(change.id)
        assert pending.state == APPROVED and pending.apply_at.ToNanoseconds() / 1e9 == pytest.approx(
            at, abs=0.01
        )
        assert not (await author.resolve("prod", "orders", "sale")).found

        async def applied() -> bool:
            return (await author.change(change.id)).state == APPLIED

        deadline = time.monotonic() + 10
        while not await applied():
            assert time.monotonic() < deadline, "the scheduled change did not apply"
            await asyncio.sleep(0.05)
        done = await author.change(change.id)
        assert done.applied_at.ToNanoseconds() / 1e9 >= at and done.applied_by.startswith("schedule (")
        assert (await author.resolve("prod", "orders", "sale")).value is True
        await asyncio.sleep(1.0)  # both replicas' schedulers had every chance to apply it again
        records = (await people["admin"].audit(env="prod", service="orders", limit=50)).records
        assert len([r for r in records if r.source.startswith(f"ChangeRequest {change.id}")]) == 1
        await eventually(lambda: change.id in replica.store.records(CHANGES), timeout=5)
    finally:
        await replica.stop()


async def test_open_change_requests_are_capped(
    people: dict[str, AdminClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    import confmesh.server.admin_changes as admin_changes

    monkeypatch.setattr(admin_changes, "MAX_OPEN", 3)
    author = people["author"]
    first = await author.propose_change([svc("a", 0)])
    for n in range(1, 3):
        await author.propose_change([svc("a", n)])
    with pytest.raises(errors.ResourceExhausted) as full:
        await author.propose_change([svc("a", 9)])
    assert full.value.code == "too_many_open"
    await author.cancel_change(first.id)  # a finished change frees its place
    await author.propose_change([svc("a", 9)])


async def test_one_writer_flooding_proposals_fills_only_its_own_share(
    people: dict[str, AdminClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging writer proposes as fast as it can, concurrently: it stops at its own cap (the check and
    the write are one step, so no race lets one more in), and prod's author can still propose."""
    import confmesh.server.admin_changes as admin_changes

    monkeypatch.setattr(admin_changes, "MAX_OPEN_PER_AUTHOR", 5)
    staging = people["staging"]
    spam = [ChangeSpec(Layer.svc("staging", "web"), f"k{n}", n) for n in range(12)]
    results = await asyncio.gather(*(staging.propose_change([c]) for c in spam), return_exceptions=True)
    refused = [r for r in results if isinstance(r, errors.ResourceExhausted)]
    assert len(results) - len(refused) == 5 and all("per author" in r.message for r in refused), results
    assert (await people["author"].propose_change([svc("a", 1)])).id


async def test_a_change_that_could_never_be_applied_is_refused_when_proposed(
    people: dict[str, AdminClient],
) -> None:
    """Four 200 KiB values: each fits, the record fits, but applying them (values, audit record, change
    record) would be one 2.4 MB etcd transaction, past etcd's 1.5 MiB: refused at once, not failed forever."""
    big = "x" * 200_000
    with pytest.raises(errors.InvalidArgument) as too_big:
        await people["author"].propose_change([svc(f"blob{n}", big) for n in range(4)])
    assert too_big.value.code == "request_too_large" and "split it" in too_big.value.message
    assert (await people["author"].propose_change([svc("blob0", big)])).id  # one of them is fine


async def test_a_scheduled_change_whose_layers_moved_fails_instead_of_applying(
    people: dict[str, AdminClient],
) -> None:
    author, second = people["author"], people["second"]
    scheduled = await author.propose_change([svc("mode", "sale")], apply_at=time.time() + 1.0)
    await second.review_change(scheduled.id, approve=True)
    other = await author.propose_change([svc("mode", "normal")])
    await second.review_change(other.id, approve=True)
    await author.apply_change(other.id)  # the layer moves before the scheduled time

    deadline = time.monotonic() + 10
    while (found := await author.change(scheduled.id)).state != FAILED:
        assert time.monotonic() < deadline and found.state == APPROVED, found
        await asyncio.sleep(0.05)
    assert "changed since change" in found.error
    assert (await author.resolve("prod", "orders", "mode")).value == "normal"


async def test_grants_and_rules_are_checked_when_a_change_takes_effect(
    people: dict[str, AdminClient], tenants: Tenants
) -> None:
    """A revoked writer's scheduled change fails instead of applying under the revoked identity; a
    rollout started directly before a rule covered its layer cannot be widened or promoted after."""
    writer2, author, admin = people["second"], people["author"], people["admin"]
    scheduled = await writer2.propose_change([svc("mode", "sale")], apply_at=time.time() + 1.0)
    await author.review_change(scheduled.id, approve=True)
    await admin.revoke_token("orders-writer-2")
    deadline = time.monotonic() + 10
    while (found := await author.change(scheduled.id)).state != FAILED:
        assert time.monotonic() < deadline and found.state == APPROVED, found
        await asyncio.sleep(0.05)
    assert "may no longer write" in found.error and "orders-writer-2" in found.error
    assert not (await author.resolve("prod", "orders", "mode")).found

    staging = people["staging"]
    await staging.put("pool", 1, env="staging", service="web")
    await staging.start_rollout("bigger", "staging", "web", set={"pool": 2}, percent=10)
    await asyncio.to_thread(_add_rule, Path(tenants.server.settings.policy_file), "staging/*")
    access = tenants.server.access
    await eventually(lambda: access.maybe_reload() or len(access.approvals) == 2)
    with pytest.raises(errors.FailedPrecondition) as widen:
        await staging.update_rollout("staging", "web", 50)
    assert widen.value.code == "approval_required"
    with pytest.raises(errors.FailedPrecondition):
        await staging.promote_rollout("staging", "web")
    await staging.abort_rollout("staging", "web")  # aborting is always allowed


def _add_rule(policy: Path, scope: str) -> None:
    policy.write_text(policy.read_text() + f'  - name: added\n    scopes: ["{scope}"]\n')
    later = time.time() + 5
    os.utime(policy, (later, later))  # a new mtime, whatever the file system's resolution


async def test_an_unknown_caller_learns_nothing_of_change_ids(tenants: Tenants) -> None:
    async with AdminClient(tenants.address) as anonymous:
        with pytest.raises(errors.Unauthenticated):
            await anonymous.change("0123abcd")  # not NotFound: existence is not revealed
    async with AdminClient(tenants.address, token=tenants.tokens["orders-service"]) as service:
        with pytest.raises(errors.PermissionDenied):
            await service.change("0123abcd")


async def test_one_writers_many_scheduled_changes_do_not_hold_back_anothers(
    people: dict[str, AdminClient], tenants: Tenants
) -> None:
    """A staging writer has 45 changes due at once (its cap of open requests is 50); prod's one approved
    change, due a moment later, is applied within the next scheduler tick or so, not after them all."""
    staging, author, second = people["staging"], people["author"], people["second"]
    at = time.time() + 1.5
    spam = [ChangeSpec(Layer.svc("staging", "web"), f"k{n}", n) for n in range(45)]
    ids = [(await staging.propose_change([c], apply_at=at)).id for c in spam]
    prod = await author.propose_change([svc("sale", True)], apply_at=at + 0.1)
    await second.review_change(prod.id, approve=True)
    deadline = time.monotonic() + 30
    while (found := await author.change(prod.id)).state != APPLIED:
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)
    waited = found.applied_at.ToNanoseconds() / 1e9 - (at + 0.1)
    still_due = [c for c in await staging.changes(states=["approved"]) if c.id in ids]
    assert waited < 2.0 and still_due, (waited, len(still_due))  # prod did not wait for them all


def test_due_changes_are_taken_in_turn_by_author() -> None:
    from confmesh.server.change_flow import PER_AUTHOR_PER_TICK, ChangeScheduler
    from confmesh.server.change_requests import ChangeRequest, ChangeState

    def change(cid: str, author: str, at: float) -> tuple[ChangeRequest, int]:
        return ChangeRequest(id=cid, title="t", author=author, reason="", base_revision=1, required=0,
                             changes=(svc("k", 1),), state=ChangeState.APPROVED, apply_at=at), 1  # fmt: skip

    store = server_store(KeyLayout("/t"))
    store.records(CHANGES).update({f"s{n}": change(f"s{n}", "spammer", 1.0 + n / 1000) for n in range(50)})
    store.records(CHANGES)["p"] = change("p", "prod-team", 1.02)
    scheduler = ChangeScheduler(None, store, None, server_id="x")  # type: ignore[arg-type]
    order = [c.id for c, _ in scheduler.due(now=2.0)]
    assert order[:2] == ["s0", "p"] and len(order) == PER_AUTHOR_PER_TICK + 1
    assert scheduler.due(now=0.5) == []


async def test_reading_a_large_change_again_reuses_its_impact(
    people: dict[str, AdminClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1,000-change request's diff and blast radius are computed once for a burst of reads (a console
    page re-reads on every live update), and again once its layers move."""
    import confmesh.server.admin_changes as admin_changes

    calls = 0
    real = admin_changes.impact

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(admin_changes, "impact", counted)
    big = await people["author"].propose_change([svc(f"k{n}", n) for n in range(1000)])
    calls = 0
    for _ in range(5):
        assert len((await people["admin"].change(big.id)).diff) == 1000
    assert calls == 1
    other = await people["author"].propose_change([svc("moved", 1)])
    await people["second"].review_change(other.id, approve=True)
    await people["author"].apply_change(other.id)  # the layer moved: the next read recomputes
    calls = 0
    assert (await people["admin"].change(big.id)).stale
    assert calls == 1

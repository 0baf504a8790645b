"""Change-request records and approval rules, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, Scope
from confmesh.server.access import Access, Bypass, load_policy_file
from confmesh.server.change_requests import (
    ChangeRequest,
    ChangeState,
    Review,
    RolloutStart,
    after_changes,
    check_id,
)

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=10,
)


@given(
    title=names, author=names, value=values, approvals=st.lists(st.tuples(names, st.booleans()), max_size=5)
)
def test_a_record_survives_encoding(
    title: str, author: str, value: object, approvals: list[tuple[str, bool]]
) -> None:
    change = ChangeRequest(
        id="0123abcd", title=title, author=author, reason="r", base_revision=7, required=1,
        changes=(ChangeSpec(Layer.svc("prod", "orders"), "a.b", value),
                 ChangeSpec(Layer.flags("prod"), "f", delete=True)),
        reviews=tuple(Review(who, ok, "c", 1.5) for who, ok in approvals), apply_at=12.5,
    )  # fmt: skip
    assert ChangeRequest.decode(change.encode()) == change


def test_approvers_are_distinct_never_the_author_and_the_latest_review_counts() -> None:
    change = ChangeRequest(
        id="0123abcd", title="t", author="ann", reason="", base_revision=1, required=2,
        changes=(ChangeSpec(Layer.env("prod"), "a", 1),),
        reviews=(Review("ann", True), Review("bob", True), Review("bob", True),
                 Review("cy", True), Review("cy", False)),
    )  # fmt: skip
    assert change.approvers() == ["bob"]
    assert change.with_(state=ChangeState.APPLIED).finished_at > 0


def test_a_record_holds_changes_or_a_rollout_and_ids_are_checked() -> None:
    with pytest.raises(errors.InvalidArgument):
        ChangeRequest(id="0123abcd", title="t", author="a", reason="", base_revision=1, required=0)
    start = RolloutStart("r", Scope("prod", "orders"), {"a": 1, "gone": None}, 5.0)
    with pytest.raises(errors.InvalidArgument):
        ChangeRequest("0123abcd", "t", "a", "", 1, 0, (ChangeSpec(Layer.env("prod"), "a", 1),), start)
    assert [(c.key, c.delete) for c in start.specs({"gone.x": 1})] == [("a", False), ("gone", True)]
    assert start.specs({}) == [ChangeSpec(start.layer, "a", 1)]
    for bad in ("", "0123abc", "0123ABCD", "../../x1", "0123abcd0"):
        with pytest.raises(errors.InvalidArgument):
            check_id(bad)


def test_after_changes_deletes_subtrees_and_refuses_absent_keys() -> None:
    layer = Layer.svc("prod", "orders")
    after = after_changes(
        {layer: {"db.host": "h", "db.pool": 1, "x": 2}}, [ChangeSpec(layer, "db", delete=True)]
    )
    assert after == {layer: {"x": 2}}
    with pytest.raises(errors.NotFound):
        after_changes({layer: {}}, [ChangeSpec(layer, "db", delete=True)])


def test_approval_rules_from_the_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "approvals:\n"
        "  - {name: prod, scopes: ['prod', 'prod/*'], flags: [prod], approvers: 2, allow: [kill, rollback]}\n"
        "  - {scopes: ['*/payments']}\n"
    )
    access = Access(dict, str(policy))
    assert access.approvals_needed([Layer.svc("prod", "orders")])[0] == 2
    assert access.approvals_needed([Layer.svc("staging", "payments")])[0] == 1
    # defaults reaches every scope, prod's included: the strictest config rule applies
    assert access.approvals_needed([Layer.defaults(), Layer.flags("staging")])[0] == 2
    assert access.approvals_needed([Layer.flags("staging")])[0] == 0
    access.require_no_approval([Layer.flags("prod")], Bypass.KILL)
    access.require_no_approval([Layer.svc("prod", "orders")], Bypass.ROLLBACK)
    with pytest.raises(errors.FailedPrecondition) as refused:
        access.require_no_approval([Layer.svc("prod", "orders")], Bypass.REVERT)
    assert refused.value.code == "approval_required" and "'prod'" in refused.value.message
    with pytest.raises(
        errors.FailedPrecondition
    ):  # env/prod reaches prod/payments, whose rule allows no rollback
        access.require_no_approval([Layer.env("prod")], Bypass.ROLLBACK)
    with pytest.raises(errors.FailedPrecondition):  # the second rule allows no emergencies but the kill
        access.require_no_approval([Layer.svc("prod", "payments")], Bypass.ROLLBACK)

    bads = (
        "approvals: [{approvers: 1}]",
        "approvals: [{scopes: [x], approvers: 0}]",
        "approvals: [{scopes: [x], allow: [everything]}]",
        "approvals: [{scopes: [x], who: me}]",
    )
    for bad in bads:
        policy.write_text(bad)
        with pytest.raises(errors.InvalidArgument):
            load_policy_file(str(policy))

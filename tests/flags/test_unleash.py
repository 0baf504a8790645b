"""Unleash toggles in confmesh: each construct from Unleash's docs, and random toggles against its engine."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.flags import FlagEvaluator, Reason
from confmesh.flags.files import read_document
from confmesh.flags.unleash_ops import context_value, js_number, normalized, semver_key


def evaluator(features: list[dict[str, Any]], segments: list[dict[str, Any]] | None = None) -> FlagEvaluator:
    doc = read_document({"version": 2, "features": features, "segments": segments or []}, format="unleash")
    assert not doc.problems, [str(p) for p in doc.problems]
    return FlagEvaluator(doc.flag_set())


def enabled(ev: FlagEvaluator, key: str, ctx: dict[str, Any]) -> bool:
    flag = ev.flag(key)
    value = ev.details(
        key, False, ctx, "boolean" if flag is None or flag.type == "boolean" else "object"
    ).value
    return bool(value["feature_enabled"] if isinstance(value, dict) else value)


def test_context_fields_resolve_as_unleash_reads_them() -> None:
    assert context_value({"userId": "u"}, "userId") == "u"
    assert context_value({"targetingKey": "t"}, "userId") == "t"
    assert context_value({"properties": {"tier": "gold"}}, "tier") == "gold"
    assert context_value({"tier": "top", "properties": {"tier": "gold"}}, "tier") == "top"
    assert context_value({"n": 3, "b": True}, "n") == "3" and context_value({"b": True}, "b") == "true"
    assert context_value({"x": ""}, "x") is None and context_value({"x": {"a": 1}}, "x") is None


def test_numbers_and_versions_parse_as_the_sdks_do() -> None:
    assert js_number("3.14") == 3.14 and js_number(" 7 ") == 7 and js_number("") == 0
    assert js_number("0x10") == 16 and js_number("1e3") == 1000
    assert math.isnan(js_number("1,5")) and math.isnan(js_number("abc")) and math.isnan(js_number(None))
    assert (
        semver_key("1.0.0-alpha")
        < semver_key("1.0.0-alpha.1")
        < semver_key("1.0.0-beta")
        < semver_key("1.0.0")
    )
    assert semver_key("1.0.0-2") < semver_key("1.0.0-10") < semver_key("1.0.0-a")
    assert semver_key("1.0.0+build") == semver_key("1.0.0")
    assert semver_key("v1.0.0") is None and semver_key("1.0") is None


def test_normalized_value_is_unleashs() -> None:
    # Vectors from Unleash's client specification (gradual rollout with groupId "Demo"/"AB12").
    assert 1 <= normalized("groupId", "123") <= 100
    assert normalized("test", "123", 100, 0) == normalized("test", "123")


CONSTRAINT_CASES = [
    ({"operator": "IN", "values": ["a", "b"]}, "a", True),
    ({"operator": "NOT_IN", "values": ["a"]}, None, True),
    ({"operator": "STR_STARTS_WITH", "values": ["Ab"], "caseInsensitive": True}, "abc", True),
    ({"operator": "STR_CONTAINS", "values": ["x"], "inverted": True}, "abc", True),
    ({"operator": "NUM_GT", "value": "10"}, "10.5", True),
    ({"operator": "NUM_LTE", "value": 3}, "abc", False),
    ({"operator": "SEMVER_GT", "value": "1.2.3"}, "1.10.0", True),
    ({"operator": "SEMVER_LT", "value": "1.0.0"}, "1.0.0-rc.1", True),
    ({"operator": "REGEX", "value": "^[a-z]+@corp\\.com$"}, "ann@corp.com", True),
    ({"operator": "REGEX", "value": "^(?=a)"}, "abc", False),
    ({"operator": "IN_CIDR", "values": ["10.0.0.0/8", "junk"]}, "10.2.3.4", True),
    ({"operator": "IN_CIDR", "values": ["2001:db8::/32"]}, "10.2.3.4", False),
    ({"operator": "NOT_A_REAL_OPERATOR", "values": ["a"], "inverted": True}, "a", False),
]


@pytest.mark.parametrize(("constraint", "value", "expected"), CONSTRAINT_CASES)
def test_constraint_operators(constraint: dict[str, Any], value: str | None, expected: bool) -> None:
    ev = evaluator(
        [
            {
                "name": "f",
                "enabled": True,
                "strategies": [{"name": "default", "constraints": [{"contextName": "field", **constraint}]}],
            }
        ]
    )
    ctx = {} if value is None else {"properties": {"field": value}}
    assert enabled(ev, "f", ctx) is expected


def test_dates_compare_with_the_context_time() -> None:
    ev = evaluator(
        [
            {
                "name": "f",
                "enabled": True,
                "strategies": [
                    {
                        "name": "default",
                        "constraints": [
                            {
                                "contextName": "currentTime",
                                "operator": "DATE_AFTER",
                                "value": "2026-01-01T00:00:00.000Z",
                            }
                        ],
                    }
                ],
            }
        ]
    )
    assert enabled(ev, "f", {"currentTime": "2026-06-01T00:00:00Z"}) is True
    assert enabled(ev, "f", {"currentTime": "2025-06-01T00:00:00Z"}) is False
    assert enabled(ev, "f", {}) is True  # no time in the context: now


def test_strategies_segments_and_disabled_toggles() -> None:
    ev = evaluator(
        [
            {"name": "off", "enabled": False, "strategies": [{"name": "default"}]},
            {"name": "bare", "enabled": True, "strategies": []},
            {
                "name": "users",
                "enabled": True,
                "strategies": [{"name": "userWithId", "parameters": {"userIds": "a, b"}}],
            },
            {
                "name": "ips",
                "enabled": True,
                "strategies": [{"name": "remoteAddress", "parameters": {"IPs": "192.168.0.1, 10.0.0.0/8"}}],
            },
            {"name": "seg", "enabled": True, "strategies": [{"name": "default", "segments": [1]}]},
            {"name": "lost-seg", "enabled": True, "strategies": [{"name": "default", "segments": [99]}]},
            {"name": "custom", "enabled": True, "strategies": [{"name": "myOwnStrategy"}]},
        ],
        [{"id": 1, "constraints": [{"contextName": "appName", "operator": "IN", "values": ["shop"]}]}],
    )
    assert ev.details("off", True, {}, "boolean").reason == Reason.DISABLED
    assert enabled(ev, "off", {}) is False and enabled(ev, "bare", {}) is True
    assert enabled(ev, "users", {"userId": "b"}) and not enabled(ev, "users", {"userId": "c"})
    assert enabled(ev, "ips", {"remoteAddress": "10.9.9.9"}) and enabled(
        ev, "ips", {"remoteAddress": "192.168.0.1"}
    )
    assert not enabled(ev, "ips", {"remoteAddress": "192.168.0.2"})
    assert enabled(ev, "seg", {"appName": "shop"}) and not enabled(ev, "seg", {"appName": "blog"})
    assert not enabled(ev, "lost-seg", {}) and not enabled(ev, "custom", {})


def test_variants_overrides_and_the_disabled_variant() -> None:
    variants = [
        {
            "name": "a",
            "weight": 50,
            "payload": {"type": "string", "value": "A"},
            "overrides": [{"contextName": "userId", "values": ["vip"]}],
        },
        {"name": "b", "weight": 50},
    ]
    ev = evaluator(
        [
            {"name": "v", "enabled": True, "strategies": [{"name": "default"}], "variants": variants},
            {"name": "off", "enabled": False, "strategies": [], "variants": variants},
            {"name": "zero", "enabled": True, "strategies": [], "variants": [{"name": "z", "weight": 0}]},
        ]
    )
    vip = ev.details("v", None, {"userId": "vip"}, "object").value
    assert vip == {
        "name": "a",
        "enabled": True,
        "feature_enabled": True,
        "payload": {"type": "string", "value": "A"},
    }
    names = {ev.details("v", None, {"userId": f"u{n}"}, "object").value["name"] for n in range(100)}
    assert names == {"a", "b"}
    assert ev.details("off", None, {}, "object").value == {
        "name": "disabled",
        "enabled": False,
        "feature_enabled": False,
    }
    assert ev.details("zero", None, {}, "object").value == {
        "name": "disabled",
        "enabled": False,
        "feature_enabled": True,
    }


def test_dependencies_become_prerequisites() -> None:
    ev = evaluator(
        [
            {
                "name": "parent",
                "enabled": True,
                "strategies": [{"name": "userWithId", "parameters": {"userIds": "a"}}],
            },
            {"name": "child", "enabled": True, "strategies": [], "dependencies": [{"feature": "parent"}]},
            {
                "name": "contrary",
                "enabled": True,
                "strategies": [],
                "dependencies": [{"feature": "parent", "enabled": False}],
            },
            {"name": "grandchild", "enabled": True, "strategies": [], "dependencies": [{"feature": "child"}]},
            {"name": "orphan", "enabled": True, "strategies": [], "dependencies": [{"feature": "nobody"}]},
        ]
    )
    assert enabled(ev, "child", {"userId": "a"}) and not enabled(ev, "child", {"userId": "b"})
    assert ev.details("child", None, {"userId": "b"}, "boolean").reason == Reason.PREREQUISITE_FAILED
    assert enabled(ev, "contrary", {"userId": "b"}) and not enabled(ev, "contrary", {"userId": "a"})
    assert not enabled(ev, "grandchild", {"userId": "a"})  # Unleash: one level of dependency only
    assert not enabled(ev, "orphan", {})
    assert [p.flag for p in ev.flag("child").prerequisites] == ["parent"]


def test_utf8_names_and_delta_events() -> None:
    doc = read_document(
        {
            "events": [
                {
                    "type": "hydration",
                    "features": [{"name": "Hellø.Wørld", "enabled": True, "strategies": []}],
                    "segments": [],
                },
                {
                    "type": "feature-updated",
                    "feature": {"name": "😊.flag", "enabled": True, "strategies": []},
                },
                {"type": "feature-removed", "featureName": "Hellø.Wørld"},
            ]
        },
        format="unleash",
    )
    assert set(doc.flag_set().flags) == {"😊.flag"}


# -- random toggles against Unleash's own engine ------------------------------------------------

ids = st.text(alphabet="abcdefghij0123456789-@.", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    rollout=st.integers(0, 100),
    group=st.text(alphabet="abcxyz-", min_size=1, max_size=8),
    stickiness=st.sampled_from(["default", "userId", "sessionId", "tenant"]),
    weights=st.lists(st.integers(0, 1000), min_size=1, max_size=4),
    users=st.lists(ids, min_size=1, max_size=25, unique=True),
)
def test_random_rollouts_agree_with_yggdrasil(
    rollout: int, group: str, stickiness: str, weights: list[int], users: list[str]
) -> None:
    from yggdrasil_engine.engine import UnleashEngine

    variants = [{"name": f"v{i}", "weight": w, "stickiness": stickiness} for i, w in enumerate(weights)]
    state = {
        "version": 2,
        "features": [
            {
                "name": "ramp",
                "enabled": True,
                "strategies": [
                    {
                        "name": "flexibleRollout",
                        "parameters": {"rollout": str(rollout), "stickiness": stickiness, "groupId": group},
                    }
                ],
            },
            {"name": "split", "enabled": True, "strategies": [{"name": "default"}], "variants": variants},
        ],
    }
    engine = UnleashEngine()
    engine.take_state(json.dumps(state))
    ours = evaluator(state["features"])
    for n, user in enumerate(users):
        ctx = {"userId": user, "sessionId": f"s{user}", "properties": {"tenant": f"t{n % 3}"}}
        assert enabled(ours, "ramp", ctx) == engine.is_enabled("ramp", ctx).is_enabled, ctx
        if sum(weights):
            want = engine.get_variant("split", ctx).variant.name
            assert ours.details("split", None, ctx, "object").value["name"] == want, ctx

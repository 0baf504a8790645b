"""Flag evaluation: every rule type, bucketing properties, errors that never raise."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh.errors import InvalidArgument
from confmesh.flags import ErrorCode, FlagEvaluator, Reason, parse_flag_set
from confmesh.flags.bucketing import legacy_md5_bucket, murmur3_bucket
from confmesh.flags.files import flags_from_document, load_flags_file
from confmesh.flags.testing import FlagOverrides, override_flags

DATA = Path(__file__).resolve().parent.parent / "data"
BOOL = {"on": True, "off": False}


def flag(key: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "variants": BOOL, "default_variant": "off", **fields}


def split(pct: float) -> dict[str, Any]:
    return {"serve": {"split": [{"variant": "on", "percent": pct}, {"variant": "off", "percent": 100 - pct}]}}


def test_a_static_flag_and_the_kill_switch() -> None:
    ev = FlagEvaluator({"dark": flag("dark", default_variant="on")})
    d = ev.get_bool_details("dark", False)
    assert (d.value, d.variant, d.reason) == (True, "on", Reason.STATIC)
    off = FlagEvaluator({"dark": flag("dark", default_variant="on", enabled=False, off_variant="off")})
    d = off.get_bool_details("dark", True)
    assert (d.value, d.variant, d.reason) == (False, "off", Reason.DISABLED)
    no_off = FlagEvaluator({"dark": flag("dark", default_variant="on", enabled=False)})
    assert no_off.get_bool_details("dark", True).value is True  # the caller's default


def test_individual_targets_then_rules_then_default() -> None:
    ev = FlagEvaluator(
        {
            "beta": flag(
                "beta",
                targets=[{"variant": "on", "values": ["alice", "bob"]}],
                rules=[
                    {
                        "id": "staff",
                        "clauses": [{"attribute": "email", "op": "ends_with", "values": ["@corp.example"]}],
                        "serve": {"variant": "on"},
                    }
                ],
            )
        }
    )
    assert ev.get_bool_details("beta", False, {"targetingKey": "alice"}).rule == "target"
    d = ev.get_bool_details("beta", False, {"targetingKey": "zed", "email": "z@corp.example"})
    assert (d.value, d.reason, d.rule) == (True, Reason.TARGETING_MATCH, "staff")
    d = ev.get_bool_details("beta", False, {"targetingKey": "zed", "email": "z@else.example"})
    assert (d.value, d.reason) == (False, Reason.DEFAULT)


@pytest.mark.parametrize(
    ("op", "values", "matching", "other"),
    [
        ("equals", ["premium"], "premium", "free"),
        ("not_equals", ["free"], "premium", "free"),
        ("contains", ["prem"], "premium", "free"),
        ("starts_with", ["pre"], "premium", "free"),
        ("ends_with", ["ium"], "premium", "free"),
        ("in", ["premium", "enterprise"], "enterprise", "free"),
        ("not_in", ["free"], "premium", "free"),
        ("regex", ["^p.*m$"], "premium", "free"),
        ("lt", [10], 3, 10),
        ("lte", [10], 10, 11),
        ("gt", [10], 11, 10),
        ("gte", [10.5], 10.5, 10),
        ("semver_eq", ["1.2.3"], "1.2.3", "1.2.4"),
        ("semver_lt", ["2.0.0"], "1.9.9", "2.0.0"),
        ("semver_lte", ["2.0.0"], "2.0.0", "2.0.1"),
        ("semver_gt", ["2.0.0-rc.1"], "2.0.0", "2.0.0-beta.1"),
        ("semver_gte", ["2.0.0"], "2.0.0", "1.0.0"),
    ],
)
def test_every_clause_operator(op: str, values: list[Any], matching: Any, other: Any) -> None:
    rule = {"clauses": [{"attribute": "a", "op": op, "values": values}], "serve": {"variant": "on"}}
    ev = FlagEvaluator({"f": flag("f", rules=[rule])})
    assert ev.get_bool("f", False, {"a": matching}) is True
    assert ev.get_bool("f", False, {"a": other}) is False
    assert ev.get_bool("f", False, {}) is False  # a missing attribute never matches
    assert ev.get_bool("f", False, {"a": ["unhashable"]}) is False or op == "contains"


def test_types_do_not_mix_in_comparisons() -> None:
    rule = {"clauses": [{"attribute": "a", "op": "in", "values": [1, "x"]}], "serve": {"variant": "on"}}
    ev = FlagEvaluator({"f": flag("f", rules=[rule])})
    assert ev.get_bool("f", False, {"a": 1}) is True
    assert ev.get_bool("f", False, {"a": True}) is False  # True is not 1
    assert ev.get_bool("f", False, {"a": "1"}) is False


def test_a_25_percent_split_lands_within_two_points_over_10000_users() -> None:
    ev = FlagEvaluator({"roll": flag("roll", rules=[split(25)])})
    on = sum(ev.get_bool("roll", False, {"targetingKey": f"user-{n}"}) for n in range(10_000))
    assert 2300 <= on <= 2700
    d = ev.get_bool_details("roll", False, {"targetingKey": "user-1"})
    assert d.reason == Reason.SPLIT


@given(st.integers(0, 9999), st.integers(0, 9999), st.lists(st.text(min_size=1, max_size=12), max_size=30))
def test_raising_a_percentage_only_adds_users(a: int, b: int, users: list[str]) -> None:
    low, high = sorted((a / 100, b / 100))
    ev_low = FlagEvaluator({"f": flag("f", rules=[split(low)])})
    ev_high = FlagEvaluator({"f": flag("f", rules=[split(high)])})
    for user in users:
        if ev_low.get_bool("f", False, {"targetingKey": user}):
            assert ev_high.get_bool("f", False, {"targetingKey": user})


def test_bucket_by_another_attribute_and_the_missing_key_error() -> None:
    ev = FlagEvaluator({"org": flag("org", bucket_by="orgId", rules=[split(50)])})
    first = ev.get_bool("org", False, {"targetingKey": "u1", "orgId": "acme"})
    assert all(
        ev.get_bool("org", False, {"targetingKey": f"u{n}", "orgId": "acme"}) == first for n in range(50)
    )
    d = ev.get_bool_details("org", True, {"targetingKey": "u1"})
    assert (d.value, d.reason, d.error_code) == (True, Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING)
    fallback = FlagEvaluator({"f": flag("f", rules=[split(50)])})
    assert fallback.get_bool_details("f", False, {"sessionId": "s1"}).reason == Reason.SPLIT


def test_a_gradual_rollout_ramps_linearly() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)
    now = [start.timestamp()]
    ramp = {
        "serve": {
            "rollout": {"variant": "on", "other": "off", "start": start.isoformat(), "end": end.isoformat()}
        }
    }
    ev = FlagEvaluator({"r": flag("r", rules=[ramp])}, clock=lambda: now[0])
    users = [{"targetingKey": f"user-{n}"} for n in range(10_000)]
    assert not any(ev.get_bool("r", False, u) for u in users[:500])
    now[0] = (start.timestamp() + end.timestamp()) / 2
    share = sum(ev.get_bool("r", False, u) for u in users) / len(users)
    assert 0.48 <= share <= 0.52
    midpoint_users = {u["targetingKey"] for u in users if ev.get_bool("r", False, u)}
    now[0] = start.timestamp() + 0.75 * (end.timestamp() - start.timestamp())
    assert all(ev.get_bool("r", False, {"targetingKey": k}) for k in midpoint_users)
    now[0] = end.timestamp() + 1
    assert all(ev.get_bool("r", False, u) for u in users[:500])


def test_prerequisites_must_be_on_and_serve_the_named_variant() -> None:
    flags = {
        "api": flag("api", default_variant="on"),
        "ui": flag(
            "ui", default_variant="on", off_variant="off", prerequisites=[{"flag": "api", "variant": "on"}]
        ),
    }
    ev = FlagEvaluator(flags)
    assert ev.get_bool_details("ui", False).value is True
    flags["api"] = {**flags["api"], "enabled": False, "off_variant": "off"}
    d = FlagEvaluator(flags).get_bool_details("ui", True)
    assert (d.value, d.reason, d.rule) == (False, Reason.PREREQUISITE_FAILED, "prerequisite:api")
    # Off is off even when its off variant is the one named: the prerequisite must be on.
    flags["api"] = {**flags["api"], "enabled": False, "off_variant": "on"}
    ev = FlagEvaluator(flags)
    d = ev.get_bool_details("ui", True)
    assert (d.value, d.reason, d.rule) == (False, Reason.PREREQUISITE_FAILED, "prerequisite:api")
    assert "prerequisite api must be on and serve 'on': it is off or missing -> FAILED" in "\n".join(
        ev.explain("ui")
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"a": flag("a", rules=[split(30) | {"serve": {"split": [{"variant": "on", "percent": 30}]}}])},
            "sum to 100",
        ),
        ({"a": {"key": "a", "variants": {"on": True, "n": 1}, "default_variant": "on"}}, "one type"),
        ({"a": flag("a", default_variant="maybe")}, "unknown variant 'maybe'"),
        (
            {
                "a": flag(
                    "a",
                    rules=[
                        {
                            "clauses": [{"attribute": "x", "op": "regex", "values": ["(?=a)"]}],
                            "serve": {"variant": "on"},
                        }
                    ],
                )
            },
            "does not compile",
        ),
        (
            {
                "a": flag(
                    "a",
                    rules=[
                        {
                            "serve": {
                                "rollout": {
                                    "variant": "on",
                                    "other": "off",
                                    "start": "2026-02-01T00:00:00Z",
                                    "end": "2026-01-01T00:00:00Z",
                                }
                            }
                        }
                    ],
                )
            },
            "end must be after",
        ),
        ({"a": flag("a", prerequisites=[{"flag": "ghost", "variant": "on"}])}, "'ghost' does not exist"),
        (
            {
                "a": flag("a", prerequisites=[{"flag": "b", "variant": "on"}]),
                "b": flag("b", prerequisites=[{"flag": "a", "variant": "on"}]),
            },
            "cycle: a -> b -> a",
        ),
        (
            {
                "a": flag(
                    "a",
                    rules=[
                        {
                            "clauses": [{"attribute": "v", "op": "semver_gt", "values": ["one"]}],
                            "serve": {"variant": "on"},
                        }
                    ],
                )
            },
            "not a semantic version",
        ),
        ({"a": flag("a", colour="red")}, "Extra inputs"),
    ],
)
def test_invalid_flag_sets_are_refused_with_the_reason(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_flag_set(flags)


def test_catastrophic_regexes_run_in_linear_time() -> None:
    rule = {"clauses": [{"attribute": "s", "op": "regex", "values": ["^(a+)+$"]}], "serve": {"variant": "on"}}
    ev = FlagEvaluator({"f": flag("f", rules=[rule])})
    started = time.perf_counter()
    assert ev.get_bool("f", False, {"s": "a" * 5000 + "b"}) is False
    assert time.perf_counter() - started < 0.5


def test_getters_check_types_and_never_raise() -> None:
    ev = FlagEvaluator({
        "n": {"key": "n", "variants": {"small": 1, "half": 0.5}, "default_variant": "small"},
        "h": {"key": "h", "variants": {"x": 0.5}, "default_variant": "x"},
        "s": {"key": "s", "variants": {"a": "A"}, "default_variant": "a"},
        "o": {"key": "o", "variants": {"v2": {"version": 2}}, "default_variant": "v2"},
    })  # fmt: skip
    assert ev.get_int("n", 0) == 1 and ev.get_float("n", 0.0) == 1.0
    assert isinstance(ev.get_float("n", 0.0), float)
    d = ev.get_int_details("h", 7)
    assert (d.value, d.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    d = ev.get_bool_details("s", True)
    assert (d.value, d.reason, d.error_code) == (True, Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    assert ev.get_str("s", "z") == "A" and ev.get_object("o", {}) == {"version": 2}
    d = ev.get_bool_details("ghost", True)
    assert (d.value, d.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)


@given(
    st.dictionaries(
        st.sampled_from(["targetingKey", "tier", "v", "userId"]),
        st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()), st.floats()),
    )
)
def test_arbitrary_contexts_never_raise(ctx: dict[str, Any]) -> None:
    rules = [
        {"clauses": [{"attribute": "v", "op": op, "values": vals}], "serve": {"variant": "on"}}
        for op, vals in [
            ("semver_gt", ["1.0.0"]),
            ("lt", [3]),
            ("regex", ["a"]),
            ("in", ["x"]),
            ("contains", [1]),
        ]
    ]
    ev = FlagEvaluator({"f": flag("f", rules=[*rules, split(50)])})
    assert ev.get_bool_details("f", False, ctx).value in (True, False)


def test_override_context_manager_applies_to_every_evaluator() -> None:
    ev = FlagEvaluator({"f": flag("f")})
    with override_flags({"f": True, "ghost": "x"}):
        assert ev.get_bool("f", False) is True
        assert FlagEvaluator({"f": flag("f")}).get_bool_details("f", False).rule == "override"
        assert ev.get_str("ghost", "d") == "x"
    assert ev.get_bool("f", True) is False


def test_the_pytest_fixture_overrides_for_one_test(confmesh_flags: FlagOverrides) -> None:
    confmesh_flags.set("f", True)
    assert FlagEvaluator({"f": flag("f")}).is_enabled("f") is True


def test_fixture_overrides_do_not_leak_into_the_next_test() -> None:
    assert FlagEvaluator({"f": flag("f")}).is_enabled("f") is False


CLASSIC = {
    "newCheckoutFlow": {"type": "percentage", "percentage": 25},
    "betaFeatures": {"type": "userList", "users": ["user-1", "user-2"]},
    "darkMode": {"type": "boolean", "enabled": True},
    "newRecommendationEngine": {
        "type": "gradualRollout",
        "startDate": "2026-01-01T00:00:00Z",
        "endDate": "2026-01-31T00:00:00Z",
    },
    "premiumFeatures": {
        "type": "userAttribute",
        "attribute": "subscriptionTier",
        "operator": "in",
        "values": ["premium", "enterprise"],
    },
    "experimentalApi": {"type": "percentage", "percentage": 10, "value": {"apiVersion": "v2"}},
}


def legacy_in(user: str, flag_name: str, pct: float) -> bool:
    return int(hashlib.md5((user + flag_name).encode()).hexdigest()[:8], 16) % 100 < pct


def test_the_classic_json_imports_as_is_and_keeps_its_bucketing() -> None:
    ev = FlagEvaluator(flags_from_document(CLASSIC))
    users = [f"user-{n}" for n in range(2000)]
    for user in users:
        ctx = {"userId": user}
        assert ev.get_bool("newCheckoutFlow", False, ctx) == legacy_in(user, "newCheckoutFlow", 25)
        expected = {"apiVersion": "v2"} if legacy_in(user, "experimentalApi", 10) else {"apiVersion": "v1"}
        assert ev.get_object("experimentalApi", {"apiVersion": "v1"}, ctx) == expected
    assert ev.get_bool("betaFeatures", False, {"userId": "user-2"}) is True
    assert ev.get_bool("betaFeatures", False, {"userId": "user-3"}) is False
    assert ev.get_bool("darkMode", False) is True
    assert ev.get_bool("premiumFeatures", False, {"userId": "u", "subscriptionTier": "enterprise"}) is True
    assert ev.get_bool("premiumFeatures", False, {"userId": "u", "subscriptionTier": "free"}) is False
    mid = datetime(2026, 1, 16, tzinfo=UTC).timestamp()
    ramped = FlagEvaluator(flags_from_document(CLASSIC), clock=lambda: mid)
    share = sum(ramped.get_bool("newRecommendationEngine", False, {"userId": u}) for u in users) / len(users)
    assert 0.44 <= share <= 0.56


def test_classic_operators_equals_contains_regex() -> None:
    doc = {
        f"f_{op}": {"type": "userAttribute", "attribute": "email", "operator": op, "values": [val]}
        for op, val in [("equals", "a@x.io"), ("contains", "@x."), ("regex", r"^[a-z]@x\.io$")]
    }
    ev = FlagEvaluator(flags_from_document(doc))
    for key in doc:
        assert ev.get_bool(key, False, {"email": "a@x.io"}) is True
        assert ev.get_bool(key, False, {"email": "bb@y.io"}) is False


def test_offline_mode_loads_flags_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  dark: {variants: {'on': true, 'off': false}, default_variant: 'on'}\n")
    assert FlagEvaluator.from_file(path).get_bool("dark", False) is True
    path.write_text("flags:\n  dark: {variants: {on: true, off: false}, default_variant: 'on'}\n")
    with pytest.raises(InvalidArgument, match="quote them"):
        load_flags_file(path)
    with pytest.raises(InvalidArgument, match=r"cannot read .*missing\.json: No such file"):
        load_flags_file(tmp_path / "missing.json")


def test_committed_bucketing_vectors_still_hold() -> None:
    data = json.loads((DATA / "bucketing_vectors.json").read_text())
    ev = FlagEvaluator(data["flags"])
    assert len(data["vectors"]) >= 30
    for vec in data["vectors"]:
        flag_def = data["flags"][vec["flag"]]
        if vec["bucket_value"]:
            expect = (
                legacy_md5_bucket(vec["flag"], vec["bucket_value"])
                if flag_def.get("bucketing") == "legacy-md5"
                else murmur3_bucket(flag_def.get("salt", ""), vec["flag"], vec["bucket_value"])
            )
            assert vec["bucket"] == expect
        getter = "string" if isinstance(next(iter(flag_def["variants"].values())), str) else "boolean"
        details = ev.details(vec["flag"], None, vec["context"], getter)
        assert details.variant == vec["variant"], vec
        assert str(details.reason) == vec["reason"]

"""Request scopes and the baggage encoding of flag decisions (pure logic)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from confmesh.flags import FlagEvaluator, Reason
from confmesh.flags import decisions as codec
from confmesh.flags.decisions import Decision
from confmesh.flags.hooks import HOOKS
from confmesh.flags.scope import current_scope, request_scope
from confmesh.flags.testing import override_flags

FLAGS = {
    "checkout": {
        "key": "checkout",
        "variants": {"on": True, "off": False},
        "default_variant": "on",
        "off_variant": "off",
    },
    "theme": {"key": "theme", "variants": {"dark": "dark", "light": "light"}, "default_variant": "light"},
    "limit": {"key": "limit", "variants": {"low": 10, "high": 100}, "default_variant": "low"},
}

flag_keys = st.from_regex(r"[A-Za-z0-9_-]{1,20}(\.[a-z]{1,5}){0,2}", fullmatch=True)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(
    st.lists(
        st.tuples(flag_keys, json_values, st.none() | st.text(max_size=12), st.integers(0, 2**40)),
        max_size=8,
        unique_by=lambda t: t[0],
    ),
    st.text(max_size=8),
)
def test_decisions_round_trip_within_bounds(
    items: list[tuple[str, Any, str | None, int]], others: str
) -> None:
    decided = [Decision(k, v, var or None, ver) for k, v, var, ver in items]
    header = codec.build_header([d.member for d in decided], "prod")
    assert len(header.encode()) <= codec.MAX_TOTAL_BYTES
    rest, flag_set, back = codec.split_header(header)
    assert rest == ""
    assert set(back) == {d.key for d in decided if d.member and d.member in header.split(",")}
    for d in decided:
        if d.key in back:
            assert back[d.key].fields() == d.fields() and flag_set == "prod"


def test_oversized_values_are_not_propagated() -> None:
    big, small = Decision("big", "x" * 1000, "v", 1), Decision("small", True, "on", 1)
    assert big.member == ""
    (back,) = codec.split_header(codec.build_header([big.member, small.member], "prod"))[2].values()
    assert back.fields() == small.fields()
    many = [Decision(f"flag-{i:03d}", "y" * 200, "v", 7).member for i in range(40)]
    header = codec.build_header(many, "prod")
    assert 0 < len(codec.split_header(header)[2]) < 40 and len(header) <= 2048


def test_other_members_survive_and_garbage_is_dropped() -> None:
    header = (
        "team=payments;prop=1, cmf.f.a=x%21on%21true,cmf.f.b=1%21on,cmf.f.c=1%21on%21%7B,"
        "cmf.f.=1%21on%21true,"
        "cmf.f.d=3%21o%2521n%21true,cmf.f.e=4!on!%22a+b%22,cmf.set=prod,cmf.junk"
    )
    rest, flag_set, back = codec.split_header(header)
    assert rest == "team=payments;prop=1" and flag_set == "prod"
    assert {k: d.fields() for k, d in back.items()} == {
        "d": ("d", True, "o!n", 3),
        "e": ("e", "a b", "on", 4),
    }


def test_scope_caches_the_first_decision_per_flag() -> None:
    ev = FlagEvaluator(FLAGS, version=5, environment="prod")
    with request_scope() as scope:
        first = ev.get_bool_details("checkout", False, {"targetingKey": "u1"})
        # The flag is turned off meanwhile: the request keeps its decision.
        off = FlagEvaluator(
            {**FLAGS, "checkout": {**FLAGS["checkout"], "enabled": False}}, version=6, environment="prod"
        )
        again = off.get_bool_details("checkout", False, {"targetingKey": "u1"})
        assert first is again and again.value is True
        assert off.get_bool("checkout", False) is True and off.is_enabled("checkout")
        flag_set, out = scope.outgoing()
        assert (flag_set, [d.fields() for d in out]) == ("prod", [("checkout", True, "on", 5)])
        assert scope.baggage() == "cmf.f.checkout=5%21on%21true,cmf.set=prod"
    assert off.get_bool("checkout", True) is False
    assert current_scope() is None


def test_upstream_decisions_win_with_reason_propagated() -> None:
    ev = FlagEvaluator(
        {**FLAGS, "checkout": {**FLAGS["checkout"], "enabled": False}}, version=9, environment="prod"
    )
    upstream = {"checkout": Decision("checkout", True, "on", 4), "limit": Decision("limit", 100, "high", 4)}
    with request_scope(upstream, flag_set="prod"):
        d = ev.get_bool_details("checkout", False)
        assert (d.value, d.variant, d.reason, d.flag_version) == (True, "on", Reason.PROPAGATED, 4)
        assert ev.get_int("limit", 0) == 100
        assert ev.get_float("limit", 0.0) == 100.0
        # Read as another type than it carries: the local evaluation answers.
        assert ev.get_str_details("checkout", "x").reason is Reason.ERROR
        assert ev.get_str("theme", "") == "light"


def test_decisions_from_another_flag_set_are_not_honoured() -> None:
    ev = FlagEvaluator(FLAGS, version=2, environment="prod")
    with request_scope({"theme": Decision("theme", "dark", "dark", 1)}, flag_set="staging") as scope:
        assert ev.get_str("theme", "") == "light"
        # ... but they travel on unchanged, without this service's decisions mixed in.
        flag_set, out = scope.outgoing()
        assert (flag_set, [d.fields() for d in out]) == ("staging", [("theme", "dark", "dark", 1)])


def test_propagate_limits_what_travels_and_scopes_nest() -> None:
    ev = FlagEvaluator(FLAGS, version=3, environment="prod")
    with request_scope(propagate={"theme"}) as outer:
        ev.get_bool("checkout", False)
        ev.get_str("theme", "")
        assert [d.key for d in outer.outgoing()[1]] == ["theme"]
        with request_scope() as inner:
            assert inner.evaluated.keys() == {"checkout", "theme"} and inner.propagate == {"theme"}


def test_overrides_still_win_and_hooks_switch_back_off() -> None:
    ev = FlagEvaluator(FLAGS, version=1, environment="prod")
    with override_flags({"checkout": False}):
        assert HOOKS.active
        assert ev.get_bool("checkout", True) is False
    assert ev.get_bool("checkout", False) is True

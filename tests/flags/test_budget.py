"""Evaluation budgets: without one an SDK evaluates as before; with one, a costly evaluation ends with
BudgetExceeded naming the limit, whatever the targeting does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh.flags import FlagEvaluator, parse_flag_set
from confmesh.flags.budget import BudgetExceeded, limited

DOUBLE = {"merge": [{"var": "accumulator"}, {"var": "accumulator"}]}
DOUBLING = {"if": [{"reduce": [{"var": "a"}, DOUBLE, [1]]}, "on", "off"]}
NESTED = {"if": [{"some": [{"var": "a"}, {"some": [{"var": ""}, {"==": [{"var": ""}, -1]}]}]}, "on", "off"]}


def evaluator(targeting: dict[str, Any]) -> FlagEvaluator:
    flag = {
        "key": "f",
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "targeting": targeting,
    }
    return FlagEvaluator(parse_flag_set({"f": flag}))


@pytest.mark.parametrize(
    ("targeting", "context"),
    [
        (DOUBLING, {"a": list(range(40))}),  # the accumulator doubles: 2**40 items without a budget
        (NESTED, {"a": [list(range(2000))] * 2000}),  # quadratic in the context
    ],
)
def test_a_costly_targeting_runs_out_of_budget(targeting: dict[str, Any], context: dict[str, Any]) -> None:
    ev = evaluator(targeting)
    with limited(100_000, 5.0), pytest.raises(BudgetExceeded, match="more than 100000 steps"):
        ev.get_bool("f", False, context)


def test_the_time_budget_holds_too() -> None:
    ev = evaluator(NESTED)
    with limited(10**12, 0.05), pytest.raises(BudgetExceeded, match=r"longer than 0\.05 s"):
        ev.get_bool("f", False, {"a": [list(range(3000))] * 3000})


def test_a_contains_clause_is_linear_in_its_lists() -> None:
    flag = {"key": "f", "variants": {"on": True, "off": False}, "default_variant": "off",
            "rules": [{"id": "t", "clauses": [{"attribute": "tags", "op": "contains",
                                                "values": [f"v{i}" for i in range(10_000)]}],
                       "serve": {"variant": "on"}}]}  # fmt: skip
    ev = FlagEvaluator(parse_flag_set({"f": flag}))
    with limited(50_000, 5.0):  # 14,000 + 10,000 would be 140,000,000 comparisons pairwise
        assert ev.get_bool("f", False, {"tags": [f"t{i}" for i in range(14_000)]}) is False
        assert ev.get_bool("f", False, {"tags": ["x", "v9999"]}) is True
        assert ev.get_bool("f", False, {"tags": [True, 1]}) is False


SCALARS = st.one_of(st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "1", "True"]))


@given(st.lists(SCALARS, max_size=6), st.lists(SCALARS, min_size=1, max_size=6))
def test_contains_matches_json_equality(context: list[Any], values: list[Any]) -> None:
    """The set-based contains agrees with pairwise JSON equality (true is not 1)."""
    flag = {"key": "f", "variants": {"on": True, "off": False}, "default_variant": "off",
            "rules": [{"id": "t", "clauses": [{"attribute": "tags", "op": "contains", "values": values}],
                       "serve": {"variant": "on"}}]}  # fmt: skip
    ev = FlagEvaluator(parse_flag_set({"f": flag}))
    expected = any(type(v) is type(c) and v == c for v in values for c in context)
    assert ev.get_bool("f", False, {"tags": context}) is expected


def test_without_a_budget_nothing_is_counted() -> None:
    ev = evaluator(NESTED)
    assert ev.get_bool("f", False, {"a": [list(range(300))] * 300}) is False

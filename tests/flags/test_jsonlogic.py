"""The JsonLogic dialect, construct by construct, as json-logic-js and flagd's providers define it."""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.flags.cbor import canonical_cbor
from confmesh.flags.jsonlogic import (
    MAX_DEPTH,
    LogicError,
    compile_logic,
    fractional_hash,
    loose_equals,
    to_number,
    to_string,
    truthy,
)


def run(expr: Any, data: Any = None, **kw: Any) -> Any:
    return compile_logic(expr, **kw)(data if data is not None else {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, False), ("", False), ([], False), (None, False), ({}, True), ("0", True), ([0], True), (-1, True)],
)
def test_truthiness(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, "1", True),
        (0, "", True),
        (0, False, True),
        (None, None, True),
        (None, 0, False),
        ("abc", "abc", True),
        (1, True, True),
        ("1.0", 1, True),
        ([1], 1, True),
        ("a", 0, False),
    ],
)
def test_loose_equality(a: Any, b: Any, expected: bool) -> None:
    assert loose_equals(a, b) is expected
    assert run({"==": [a, b]}) is expected
    assert run({"!=": [a, b]}) is (not expected)


def test_coercions_follow_javascript() -> None:
    assert to_number(" 12 ") == 12 and to_number("") == 0 and math.isnan(to_number("x"))
    assert to_string(1.0) == "1" and to_string(None) == "null" and to_string([1, [2, 3]]) == "1,2,3"
    assert run({"===": [1, 1.0]}) is True and run({"===": [1, "1"]}) is False
    assert run({"<": ["10", 9]}) is False and run({"<": ["a", "b"]}) is True
    assert run({"<": [1, {"var": "x"}, 3]}, {"x": 2}) is True  # between
    assert run({"<=": [1, {"var": "x"}, 3]}, {"x": 3}) is True


def test_arithmetic_and_strings() -> None:
    assert run({"+": ["1", 2]}) == 3 and run({"*": [2, "3"]}) == 6 and run({"-": [5]}) == -5
    assert run({"/": [1, 4]}) == 0.25 and run({"%": [7, 3]}) == 1
    assert run({"min": [3, 1, 2]}) == 1 and run({"max": []}) is None
    assert run({"cat": ["a", 1, None, True]}) == "a1nulltrue"
    assert run({"substr": ["jsonlogic", -5]}) == "logic" and run({"substr": ["jsonlogic", 1, -5]}) == "son"
    assert run({"in": ["log", "jsonlogic"]}) is True and run({"in": ["b", ["a", "b"]]}) is True
    assert run({"merge": [1, [2, 3], [[4]]]}) == [1, 2, 3, [4]]


def test_var_missing_and_defaults() -> None:
    data = {"user": {"name": "ann", "tags": ["a", "b"]}, "n": 0}
    assert run({"var": "user.name"}, data) == "ann"
    assert run({"var": "user.tags.1"}, data) == "b"
    assert run({"var": ["user.email", "none"]}, data) == "none"
    assert run({"var": "user.name.first"}, data) is None
    assert run({"var": ""}, data) == data
    assert run({"var": "n"}, data) == 0
    assert run({"missing": ["user.name", "user.email", "x"]}, data) == ["user.email", "x"]
    assert run({"missing_some": [1, ["a", "n"]]}, data) == []
    assert run({"var": "$flagd.flagKey"}, flag_key="my-flag") == "my-flag"
    assert run({"var": "$flagd.timestamp"}, clock=lambda: 1700000000.7) == 1700000000


def test_array_operations() -> None:
    data = {"xs": [1, 2, 3, 4]}
    assert run({"map": [{"var": "xs"}, {"*": [{"var": ""}, 2]}]}, data) == [2, 4, 6, 8]
    assert run({"filter": [{"var": "xs"}, {">": [{"var": ""}, 2]}]}, data) == [3, 4]
    add = {"+": [{"var": "current"}, {"var": "accumulator"}]}
    assert run({"reduce": [{"var": "xs"}, add, 10]}, data) == 20
    assert run({"all": [{"var": "xs"}, {">": [{"var": ""}, 0]}]}, data) is True
    assert run({"all": [[], True]}) is False
    assert run({"none": [{"var": "xs"}, {">": [{"var": ""}, 9]}]}, data) is True
    assert run({"some": [{"var": "xs"}, {"==": [{"var": ""}, 3]}]}, data) is True


def test_if_and_or_short_circuit() -> None:
    assert run({"if": [False, "a", None, "b", "c"]}) == "c"
    assert run({"if": []}) is None and run({"if": [1]}) == 1
    assert run({"and": [1, "", 2]}) == "" and run({"or": [0, None, "x"]}) == "x"
    assert run({"or": [1, {"var": "boom.x"}]}) == 1
    assert run({"!": [[]]}) is True and run({"!!": ["0"]}) is True


def test_flagd_string_operators_are_null_on_wrong_input() -> None:
    assert run({"starts_with": [{"var": "e"}, "ab"]}, {"e": "abc"}) is True
    assert run({"ends_with": [{"var": "e"}, "bc"]}, {"e": "abc"}) is True
    assert run({"starts_with": [{"var": "e"}, "ab"]}, {"e": 12}) is None
    assert run({"starts_with": ["ab"]}) is None


@pytest.mark.parametrize(
    ("version", "op", "bound", "expected"),
    [
        ("1.2.3", "=", "1.2.3", True),
        ("v1.2.3", "=", "1.2.3", True),
        ("1.2", "=", "1.2.0", True),
        ("1.5.0", "^", "1.0.0", True),
        ("2.0.0", "^", "1.9.9", False),
        ("1.2.9", "~", "1.2.0", True),
        ("1.3.0", "~", "1.2.0", False),
        ("1.0.0-alpha", "<", "1.0.0", True),
        ("2", ">", "1.9.9", True),
        ("1.0.0+build.1", "=", "1.0.0", True),
        ("not-a-version", "=", "1.0.0", None),
        ("1.0.0", "??", "1.0.0", None),
    ],
)
def test_sem_ver(version: str, op: str, bound: str, expected: bool | None) -> None:
    assert run({"sem_ver": [{"var": "v"}, op, bound]}, {"v": version}) is expected


def test_fractional_buckets_by_weight_and_hash() -> None:
    weights = [["a", 10], ["b", 30], ["c", 60]]
    expr = {"fractional": [{"var": "id"}, *weights]}
    for n in range(200):
        value = f"user-{n}"
        point = (mmh3.hash(value, 0, False) * 100) >> 32
        want = "a" if point < 10 else "b" if point < 40 else "c"
        assert run(expr, {"id": value}) == want
    shorthand = compile_logic({"fractional": weights}, flag_key="f")
    assert shorthand({"targetingKey": "u1"}) == run(expr, {"id": "fu1"})
    assert shorthand({}) is None and shorthand({"targetingKey": 5}) is None
    assert run({"fractional": [{"var": "id"}, ["a", 0], ["b", -3]]}, {"id": "x"}) is None
    assert run({"fractional": [{"var": "id"}, ["only"]]}, {"id": "x"}) == "only"


def test_fractional_computes_buckets_and_weights() -> None:
    expr = {
        "fractional": [
            {"var": "id"},
            [{"if": [{"==": [{"var": "tier"}, "gold"]}, "gold", "std"]}, 50],
            ["std", {"if": [{"var": "tier"}, 50, 0]}],
        ]
    }
    seen = {run(expr, {"id": f"u{n}", "tier": "gold"}) for n in range(50)}
    assert seen == {"gold", "std"}
    assert {run(expr, {"id": f"u{n}"}) for n in range(50)} == {"std"}  # second weight 0 -> all first bucket


def test_fractional_v3_hashes_canonical_cbor() -> None:
    assert fractional_hash("abc", cbor=True) == mmh3.hash(cbor2.dumps("abc", canonical=True), 0, False)
    assert fractional_hash(["f", "u"], cbor=True) == mmh3.hash(
        cbor2.dumps(["f", "u"], canonical=True), 0, False
    )
    assert fractional_hash(1.0, cbor=True) == fractional_hash(1, cbor=True)
    assert fractional_hash(7) is None  # v2 buckets strings only
    v3 = compile_logic({"fractional": [["a", 1], ["b", 1]]}, flag_key="k", cbor_fractional=True)
    h = mmh3.hash(cbor2.dumps(["k", "user"], canonical=True), 0, False)
    assert v3({"targetingKey": "user"}) == ("a" if (h * 2) >> 32 < 1 else "b")


@pytest.mark.parametrize(
    ("expr", "path", "message"),
    [
        ({"frob": [1]}, "", "unknown operator 'frob'"),
        ({"if": [{"in": ["a"]}, 1, 2]}, "if[0].in", "takes 2 arguments"),
        ({"and": [1], "or": [2]}, "", "exactly one key"),
        ({"fractional": [{"var": "x"}]}, "fractional", "at least one bucket"),
        ({"fractional": [{"var": "x"}, ["a", 1.5]]}, "fractional[1]", "integer weight"),
    ],
)
def test_compile_errors_name_the_node(expr: Any, path: str, message: str) -> None:
    with pytest.raises(LogicError) as info:
        compile_logic(expr)
    assert info.value.path == path and message in info.value.message


def test_size_limits_are_refused_at_compile_time() -> None:
    deep: Any = True
    for _ in range(MAX_DEPTH + 2):
        deep = {"!": [deep]}
    with pytest.raises(LogicError, match="nests deeper"):
        compile_logic(deep)
    with pytest.raises(LogicError, match="more than"):
        compile_logic({"cat": [{"var": "x"}] * 10_001})


def test_constant_expressions_fold() -> None:
    fn = compile_logic({"if": [{"==": [1, 1]}, {"cat": ["a", "b"]}, "c"]})
    assert fn({}) == "ab"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_canonical_cbor_is_cbor2s_canonical_encoding(value: Any) -> None:
    assert canonical_cbor(value) == cbor2.dumps(value, canonical=True)


EXPRESSIONS = [
    {"==": [{"var": "a"}, {"var": "b"}]},
    {"<": [{"var": "a"}, 3, {"var": "b"}]},
    {"+": [{"var": "a"}, {"var": "b"}]},
    {"cat": [{"var": "a"}, {"var": "b.c"}]},
    {"in": [{"var": "a"}, {"var": "b"}]},
    {"substr": [{"var": "a"}, {"var": "b"}]},
    {"sem_ver": [{"var": "a"}, "^", {"var": "b"}]},
    {"fractional": [{"var": "a"}, ["x", {"var": "b"}], ["y", 1]]},
    {"map": [{"var": "a"}, {"var": "b"}]},
    {"reduce": [{"var": "a"}, {"+": [{"var": "current"}, 1]}, {"var": "b"}]},
    {"starts_with": [{"var": "a"}, {"var": "b"}]},
    {"%": [{"var": "a"}, {"var": "b"}]},
    {"merge": [{"var": "a"}, {"var": "b"}]},
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EXPRESSIONS), json_values, json_values)
def test_evaluation_never_raises_on_any_data(expr: dict[str, Any], a: Any, b: Any) -> None:
    result = compile_logic(expr)({"a": a, "b": b})
    json.dumps(result, allow_nan=True)

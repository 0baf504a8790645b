"""flagd files in and out: reading keeps flagd's semantics, exporting keeps confmesh's outcomes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.flags import FlagEvaluator, Reason
from confmesh.flags.flagd import export_flagd, read_flagd
from confmesh.flags.model import Flag, FlagSet


def read(document: dict[str, Any]) -> Any:
    return read_flagd(document, source="f.json")


def test_refs_are_inlined_and_cycles_refused() -> None:
    doc = read(
        {
            "flags": {
                "a": {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "off",
                    "targeting": {"if": [{"$ref": "corp"}, "on", None]},
                },
                "loop": {
                    "state": "ENABLED",
                    "variants": {"on": True},
                    "defaultVariant": "on",
                    "targeting": {"$ref": "x"},
                },
            },
            "$evaluators": {
                "corp": {"ends_with": [{"var": "email"}, "@corp.com"]},
                "x": {"$ref": "y"},
                "y": {"$ref": "x"},
            },
        }
    )
    assert doc.flags["a"].targeting == {"if": [{"ends_with": [{"var": "email"}, "@corp.com"]}, "on", None]}
    assert [(p.flag, p.path) for p in doc.problems] == [("loop", "targeting")]
    assert "cycle" in doc.problems[0].message and "loop" in doc.broken


def test_refs_that_multiply_are_refused_before_they_are_built() -> None:
    evaluators: dict[str, Any] = {"e0": {"var": "x"}}
    for n in range(1, 16):
        evaluators[f"e{n}"] = {"and": [{"$ref": f"e{n - 1}"}] * 10}  # 10**15 nodes if inlined
    doc = read({"flags": {"bomb": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on",
                                   "targeting": {"$ref": "e15"}}}, "$evaluators": evaluators})  # fmt: skip
    assert [(p.flag, p.path) for p in doc.problems] == [("bomb", "targeting")]
    assert "larger than 10000 nodes" in doc.problems[0].message


def test_default_variants_disabled_flags_and_metadata() -> None:
    doc = read(
        {
            "metadata": {"team": "set", "version": 1},
            "flags": {
                "nodefault": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": None},
                "empty": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": ""},
                "boolname": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "defaultVariant": True},
                "off": {
                    "state": "DISABLED",
                    "variants": {"a": "A"},
                    "defaultVariant": "a",
                    "metadata": {"team": "flag"},
                },
            },
        }
    )
    assert not doc.problems
    ev = FlagEvaluator(doc.flag_set())
    missing = ev.details("nodefault", "caller", {}, "string")
    assert (missing.value, missing.reason) == ("caller", Reason.DEFAULT)
    assert ev.details("empty", "caller", {}, "string").value == "caller"
    assert ev.details("boolname", 5, {}, "integer").value == 1
    off = ev.details("off", "caller", {}, "string")
    assert (off.value, off.reason) == ("caller", Reason.DISABLED)
    assert dict(off.metadata) == {"team": "flag", "version": 1}


def test_unknown_fields_and_bad_values_are_problems_with_paths() -> None:
    doc = read(
        {
            "flags": {"x": {"state": "ON", "variants": {"a": 1}, "defaultVariant": "a", "colour": 1}},
            "extra": 1,
        }
    )
    assert sorted((p.flag, p.path) for p in doc.problems) == [("", "extra"), ("x", "colour"), ("x", "state")]


# -- export round trip ------------------------------------------------------------------------

names = st.sampled_from(["on", "off"])
scalars = st.sampled_from(["gold", "silver", "eu", "", "a@corp.com", "30"]) | st.integers(-5, 50)
strings = st.sampled_from(["gold", "silver", "eu", "a@", "@corp.com", "3"])
clauses = st.one_of(
    st.builds(
        lambda a, v: {"attribute": a, "op": "in", "values": v},
        st.sampled_from(["plan", "region"]),
        st.lists(strings, min_size=1, max_size=3),
    ),
    st.builds(
        lambda a, v: {"attribute": a, "op": "not_in", "values": v},
        st.sampled_from(["plan", "region"]),
        st.lists(strings, min_size=1, max_size=3),
    ),
    st.builds(lambda v: {"attribute": "plan", "op": "equals", "values": [v]}, strings),
    st.builds(lambda v: {"attribute": "plan", "op": "not_equals", "values": [v]}, strings),
    st.builds(
        lambda o, v: {"attribute": "email", "op": o, "values": [v]},
        st.sampled_from(["starts_with", "ends_with"]),
        strings,
    ),
    st.builds(
        lambda o, v: {"attribute": "age", "op": o, "values": [v]},
        st.sampled_from(["lt", "lte", "gt", "gte"]),
        st.integers(0, 40),
    ),
    st.builds(
        lambda v: {"attribute": "email", "op": "contains", "values": v},
        st.lists(strings, min_size=1, max_size=2),
    ),
)
flags = st.builds(
    lambda enabled, default, off, targets, rules: {
        "key": "f",
        "enabled": enabled,
        "variants": {"on": True, "off": False},
        "default_variant": default,
        "off_variant": off,
        "targets": targets,
        "rules": rules,
    },
    st.booleans(),
    names,
    st.none() | names,
    st.lists(
        st.builds(
            lambda v, vals, attr: {"variant": v, "values": vals, "attribute": attr},
            names,
            st.lists(st.sampled_from(["u1", "u2", "u3"]), min_size=1, max_size=2),
            st.none() | st.just("team"),
        ),
        max_size=2,
    ),
    st.lists(
        st.builds(
            lambda cs, v: {"clauses": cs, "serve": {"variant": v}}, st.lists(clauses, max_size=2), names
        ),
        max_size=3,
    ),
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "targetingKey": st.sampled_from(["u1", "u2", "u9"]),
        "userId": st.sampled_from(["u2", "u3"]),
        "team": st.sampled_from(["u1", "u3", "x"]),
        "plan": scalars,
        "region": scalars,
        "email": scalars,
        "age": scalars,
    },
)


@settings(max_examples=300, deadline=None)
@given(flags, st.lists(contexts, min_size=1, max_size=8))
def test_exported_flags_serve_what_confmesh_serves(
    definition: dict[str, Any], ctxs: list[dict[str, Any]]
) -> None:
    flag = Flag.model_validate(definition)
    ours = FlagEvaluator(FlagSet(flags={"f": flag}))
    document, left_out = export_flagd(FlagSet(flags={"f": flag}))
    assert not left_out
    theirs_doc = read_flagd(document, source="exported")
    assert not theirs_doc.problems
    theirs = FlagEvaluator(theirs_doc.flag_set())
    for ctx in ctxs:
        a = ours.details("f", None, ctx, "boolean")
        b = theirs.details("f", None, ctx, "boolean")
        assert (a.value, a.variant) == (b.value, b.variant), (ctx, document)

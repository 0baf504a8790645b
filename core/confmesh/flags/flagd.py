"""flagd's flag files, read into confmesh flags and written back.

A flagd file (https://flagd.dev/reference/flag-definitions/) is
``{"flags": {key: {state, variants, defaultVariant, targeting, metadata}},
"$evaluators": {...}, "metadata": {...}}``. Reading keeps flagd's semantics:
the targeting is kept as JsonLogic (``$ref`` evaluators inlined), a disabled
flag serves the caller's default, the flag set's metadata is merged under each
flag's own. Writing (``export``) turns confmesh's targets and rules into
JsonLogic where the translation is exact, and names every flag it cannot
export with the reason (splits hash differently, prerequisites have no flagd
equivalent, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from confmesh.flags.formats import FlagsDocument, FormatProblem, validate_flag
from confmesh.flags.jsonlogic import MAX_NODES
from confmesh.flags.model import Clause, Flag, FlagSet, Rule

FLAG_FIELDS = frozenset(
    {"state", "variants", "defaultVariant", "targeting", "metadata", "source", "selector"}
)
TOP_FIELDS = frozenset({"$schema", "flags", "$evaluators", "metadata"})
MAX_REF_DEPTH = 16
FRACTIONAL = ("v2", "v3")


def is_flagd(document: Any) -> bool:
    if not isinstance(document, Mapping):
        return False
    if "flagd" in str(document.get("$schema", "")) or "$evaluators" in document:
        return True
    flags = document.get("flags")
    return (
        isinstance(flags, Mapping)
        and bool(flags)
        and all(isinstance(f, Mapping) and "state" in f for f in flags.values())
    )


class RefBudget(ValueError):
    pass


class _Refs:
    def __init__(self, evaluators: Mapping[str, Any]) -> None:
        self.evaluators = evaluators
        self.nodes = 0

    def inline(self, node: Any, stack: tuple[str, ...] = ()) -> Any:
        """`node` with every {"$ref": name} replaced by its evaluator.

        KeyError for a missing evaluator, RecursionError for a cycle, RefBudget when the
        inlined expression would pass MAX_NODES (evaluators that each use the next many
        times grow exponentially)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise RefBudget(f"inlining its $ref evaluators makes the targeting larger than {MAX_NODES} nodes")
        if isinstance(node, dict):
            if len(node) == 1 and "$ref" in node:
                name = node["$ref"]
                if not isinstance(name, str) or name not in self.evaluators:
                    raise KeyError(name)
                if name in stack or len(stack) >= MAX_REF_DEPTH:
                    raise RecursionError(" -> ".join((*stack, name)))
                return self.inline(copy.deepcopy(self.evaluators[name]), (*stack, name))
            return {k: self.inline(v, stack) for k, v in node.items()}
        if isinstance(node, list):
            return [self.inline(v, stack) for v in node]
        return node


def read_flagd(document: Any, *, source: str = "flags", fractional: str = "v2") -> FlagsDocument:
    """Every flag of a flagd file as a confmesh flag; problems collected, not raised.

    ``fractional`` is the bucketing the file's flagd used: "v2" hashes the bucketing
    string, "v3" (flagd-core >= 2.0) its canonical CBOR; imported flags keep it.
    """
    if fractional not in FRACTIONAL:
        raise ValueError(f"fractional is one of {', '.join(FRACTIONAL)}")
    doc = FlagsDocument()
    if not isinstance(document, Mapping):
        doc.problems.append(FormatProblem(source, "", "", "a flagd file is a JSON object"))
        return doc
    for name in sorted(set(document) - TOP_FIELDS):
        doc.problems.append(FormatProblem(source, "", name, "unknown field in a flagd file"))
    flags = document.get("flags")
    if not isinstance(flags, Mapping):
        doc.problems.append(FormatProblem(source, "", "flags", "'flags' must be an object"))
        return doc
    evaluators = document.get("$evaluators") or {}
    if not isinstance(evaluators, Mapping):
        doc.problems.append(FormatProblem(source, "", "$evaluators", "'$evaluators' must be an object"))
        evaluators = {}
    set_metadata = document.get("metadata") or {}
    if not isinstance(set_metadata, Mapping):
        doc.problems.append(FormatProblem(source, "", "metadata", "'metadata' must be an object"))
        set_metadata = {}
    refs = _Refs(evaluators)
    for key, body in flags.items():
        _read_flag(str(key), body, refs, set_metadata, source, doc, fractional)
    return doc


def _read_flag(
    key: str,
    body: Any,
    refs: _Refs,
    set_metadata: Mapping[str, Any],
    source: str,
    doc: FlagsDocument,
    fractional: str,
) -> None:
    def problem(path: str, message: str) -> None:
        doc.problems.append(FormatProblem(source, key, path, message))
        doc.broken.setdefault(key, f"{path}: {message}" if path else message)

    if not isinstance(body, Mapping):
        problem("", "a flag is an object")
        return
    for name in sorted(set(body) - FLAG_FIELDS):
        problem(name, "unknown field in a flagd flag")
    state = body.get("state")
    if state not in ("ENABLED", "DISABLED"):
        problem("state", f"state is ENABLED or DISABLED, got {state!r}")
    default = body.get("defaultVariant")
    if isinstance(default, bool):
        default = "true" if default else "false"
    if default == "":
        default = None
    if default is not None and not isinstance(default, str):
        problem("defaultVariant", f"defaultVariant is a variant name, got {default!r}")
    targeting = body.get("targeting")
    if targeting is not None:
        try:
            refs.nodes = 0
            targeting = refs.inline(targeting)
        except KeyError as exc:
            problem("targeting", f"$ref to an evaluator that does not exist: {exc.args[0]!r}")
        except RecursionError as exc:
            problem("targeting", f"$ref evaluators refer to each other in a cycle: {exc}")
        except RefBudget as exc:
            problem("targeting", str(exc))
        if not isinstance(targeting, dict):
            problem("targeting", "targeting is a JsonLogic object")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        problem("metadata", "metadata is an object")
        metadata = {}
    if key in doc.broken:
        return
    definition: dict[str, Any] = {
        "key": key,
        "enabled": state == "ENABLED",
        "variants": body.get("variants"),
        "default_variant": default,
        "off_variant": None,
        "targeting": targeting or None,
        "metadata": {**set_metadata, **metadata},
    }
    if fractional == "v3" and targeting:
        definition["bucketing"] = "murmur3-cbor"
    validate_flag(definition, source, key, doc)


# -- export ------------------------------------------------------------------------------------


def _is_string(expr: Any) -> dict[str, Any]:
    # `cat` always yields a string, so this holds exactly when `expr` is one.
    return {"===": [{"cat": [expr]}, expr]}


def _is_number(expr: Any) -> dict[str, Any]:
    # Unary `+` yields a number, so this holds exactly when `expr` is one.
    return {"===": [{"+": [expr]}, expr]}


_USER_KEY = {
    "if": [
        {"var": "targetingKey"}, {"var": "targetingKey"},
        {"var": "userId"}, {"var": "userId"},
        {"var": "sessionId"},
    ]
}  # fmt: skip


class Unexportable(ValueError):
    pass


def _clause(clause: Clause) -> Any:
    attr = {"var": clause.attribute}
    op, values = clause.op, clause.values
    if op in ("in", "equals", "not_in", "not_equals"):
        if not all(type(v) is str for v in values):
            raise Unexportable(f"clause on {clause.attribute!r}: {op} over non-string values")
        member = {"in": [attr, list(values)]}
        if op in ("in", "equals"):
            return member
        return {"and": [_is_string(attr), {"!": member}]}
    if op in ("starts_with", "ends_with"):
        return {op: [attr, values[0]]}
    if op in ("lt", "lte", "gt", "gte"):
        symbol = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
        return {"and": [_is_number(attr), {symbol: [attr, values[0]]}]}
    if op == "contains" and all(type(v) is str for v in values):
        return {"and": [_is_string(attr), {"or": [{"in": [v, attr]} for v in values]}]}
    raise Unexportable(f"clause on {clause.attribute!r}: flagd has no exact equivalent of {op!r}")


def _rule(rule: Rule, index: int) -> tuple[Any, str | None]:
    serve = rule.serve
    if serve.variant is None and serve.split is None and serve.rollout is None:
        raise Unexportable(f"rules[{index}] serves the caller's default, which flagd cannot name")
    if serve.split is not None or serve.rollout is not None:
        raise Unexportable(
            f"rules[{index}]: percentage splits and ramps bucket with confmesh's hash "
            "(flagd's fractional hashes CBOR), so users would move"
        )
    matchers = [_clause(c) for c in rule.clauses]
    condition: Any = True if not matchers else matchers[0] if len(matchers) == 1 else {"and": matchers}
    return condition, serve.variant


def export_flag(flag: Flag) -> dict[str, Any]:
    """One confmesh flag in flagd's schema; Unexportable says why it cannot be."""
    if flag.prerequisites:
        raise Unexportable("prerequisites have no flagd equivalent")
    if flag.targeting and any(op.startswith("unleash_") for op in _operators(flag.targeting)):
        raise Unexportable("its targeting uses Unleash's strategies, which flagd does not have")
    out: dict[str, Any] = {"state": "ENABLED", "variants": dict(flag.variants)}
    if not flag.enabled:
        if flag.off_variant is None:
            out["state"] = "DISABLED"
        else:
            # flagd's disabled flag serves the caller's default; this serves the off variant.
            out["defaultVariant"] = flag.off_variant
        if flag.metadata:
            out["metadata"] = dict(flag.metadata)
        return out
    out["defaultVariant"] = flag.default_variant
    branches: list[Any] = []
    for target in flag.targets:
        if target.variant is None:
            raise Unexportable("a target serves the caller's default, which flagd cannot name")
        key = _USER_KEY if target.attribute is None else {"var": target.attribute}
        branches += [{"in": [key, list(target.values)]}, target.variant]
    for i, rule in enumerate(flag.rules):
        condition, variant = _rule(rule, i)
        branches += [condition, variant]
    if flag.targeting:
        branches.append(flag.targeting)
    elif branches:
        branches.append(None)
    if branches:
        out["targeting"] = branches[0] if len(branches) == 1 else {"if": branches}
    if flag.metadata:
        out["metadata"] = dict(flag.metadata)
    return out


def _operators(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            found.add(k)
            found |= _operators(v)
    elif isinstance(node, list):
        for v in node:
            found |= _operators(v)
    return found


def export_flagd(flag_set: FlagSet | Mapping[str, Flag]) -> tuple[dict[str, Any], dict[str, str]]:
    """(a flagd file of the flags that export exactly, {flag: why it was left out})."""
    flags = flag_set.flags if isinstance(flag_set, FlagSet) else flag_set
    out: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    for key in sorted(flags):
        try:
            out[key] = export_flag(flags[key])
        except Unexportable as exc:
            left_out[key] = str(exc)
    document = {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": out}
    return document, left_out

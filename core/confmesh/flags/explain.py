"""Why a flag served what it served, step by step (for `confmesh flags explain`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from confmesh.flags.model import Clause

if TYPE_CHECKING:
    from confmesh.flags.evaluator import Context, FlagEvaluator


def _clause_text(clause: Clause, ctx: Context) -> str:
    actual = ctx.get(clause.attribute, "<missing>")
    values = clause.values[0] if len(clause.values) == 1 else clause.values
    return f"{clause.attribute} {clause.op} {json.dumps(values)} (context: {json.dumps(actual, default=str)})"


def explain_flag(ev: FlagEvaluator, key: str, ctx: Context) -> list[str]:
    from confmesh.flags.evaluator import compile_clause

    compiled = ev.compiled(key)
    if compiled is None:
        return [f"flag {key!r} does not exist (FLAG_NOT_FOUND): the caller's default is served"]
    flag = compiled.flag
    steps = [f"flag {key!r} ({flag.kind}, {flag.type}, snapshot version {ev.version})"]
    result = ev.details(key, None, ctx, {"number": "float"}.get(flag.type, flag.type))
    if not flag.enabled:
        steps.append(f"flag is OFF: serves off variant {flag.off_variant!r}")
        return [*steps, _result(result)]
    for p in flag.prerequisites:
        got = ev.evaluate_variant(p.flag, ctx)
        accepted = " or ".join(repr(v) for v in sorted(p.accepted))
        serves = "it is off or missing" if got is None else f"it serves {got!r}"
        if p.enabled:
            ok = got in p.accepted
            wants = f"must be on and serve {accepted}"
        else:
            ok = got is None or got in p.accepted
            wants = f"must be off or serve {accepted}"
        steps.append(
            f"prerequisite {p.flag} {wants}: {serves} -> "
            + ("ok" if ok else f"FAILED, serves off variant {flag.off_variant!r}")
        )
        if not ok:
            return [*steps, _result(result)]
    for target in flag.targets:
        attr = target.attribute or "targetingKey/userId/sessionId"
        steps.append(f"individual target {target.variant!r} on {attr}: {len(target.values)} value(s)")
    if result.rule == "target":
        steps.append("context matched an individual target")
        return [*steps, _result(result)]
    for i, rule in enumerate(flag.rules):
        name = rule.id or f"rules[{i}]"
        if not rule.clauses:
            steps.append(f"{name}: no clauses, matches everyone")
        for clause in rule.clauses:
            hit = compile_clause(clause)(ctx)
            steps.append(f"{name}: {_clause_text(clause, ctx)} -> {'match' if hit else 'no match'}")
        if result.rule == name:
            serve = rule.serve
            if serve.split is not None:
                parts = ", ".join(f"{p.variant}={p.percent:g}%" for p in serve.split)
                steps.append(f"{name} matched: percentage split ({parts}) by bucket")
            elif serve.rollout is not None:
                steps.append(
                    f"{name} matched: gradual rollout of {serve.rollout.variant!r} from "
                    f"{serve.rollout.start.isoformat()} to {serve.rollout.end.isoformat()}"
                )
            else:
                steps.append(f"{name} matched: serves {serve.variant!r}")
            return [*steps, _result(result)]
    if flag.targeting:
        steps.append(f"targeting (JsonLogic): {json.dumps(flag.targeting)[:500]}")
        if result.rule == "targeting":
            steps.append(f"targeting yielded {result.variant!r}")
            return [*steps, _result(result)]
        if result.error_code is not None:
            return [*steps, _result(result)]
        steps.append("targeting yielded null")
    none = "no rule matched" if flag.rules else "no rules"
    steps.append(f"{none}: serves the default variant {flag.default_variant!r}")
    return [*steps, _result(result)]


def _result(details: Any) -> str:
    err = f", error {details.error_code}: {details.error_message}" if details.error_code else ""
    return (
        f"=> value {json.dumps(details.value, default=str)}, variant {details.variant!r}, "
        f"reason {details.reason}{err}"
    )

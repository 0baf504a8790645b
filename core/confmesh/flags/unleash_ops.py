"""Unleash's strategies, constraints and variants as targeting operators, compiled once.

An imported Unleash toggle's targeting is ordinary JsonLogic over two operators
that carry Unleash's own definitions unchanged:

``{"unleash_strategy": {name, parameters, constraints}}``
    true when every constraint holds and the strategy activates, as Unleash's
    SDKs decide: ``default``, ``userWithId``, ``gradualRolloutUserId``,
    ``gradualRolloutSessionId``, ``gradualRolloutRandom``, ``flexibleRollout``,
    ``remoteAddress``, ``applicationHostname``; an unknown strategy is false.
``{"unleash_variant": {variants: [{key, name, weight, stickiness?, overrides?}], groupId}}``
    the key of the variant Unleash picks: overrides first, then
    ``murmur3("groupId:stickiness", 86028157) % totalWeight + 1`` against the
    running weights; ``otherwise`` (or null) when the weights sum to zero.

Bucketing is Unleash's: ``murmur3("groupId:id", 0) % 100 + 1`` against the
rollout percentage. The context is Unleash's: a field is read from the top level,
then from ``properties``; ``userId`` falls back to OpenFeature's ``targetingKey``;
values compare as strings (Unleash contexts are strings), numbers and dates
parsed as the SDKs parse them. Malformed definitions are refused at compile
time with their path; a constraint whose operator Unleash does not know is false.
"""

from __future__ import annotations

import ipaddress
import math
import os
import platform
import random
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import mmh3
import re2

from confmesh.flags.jsonlogic import Extension, Fn, LogicError, to_number, to_string

VARIANT_SEED = 86028157
MAX_CONSTRAINTS = 100
MAX_VALUES = 10_000
MAX_VARIANTS = 100
MAX_PATTERN = 1_000
STANDARD_FIELDS = frozenset({"userId", "sessionId", "remoteAddress", "environment", "appName", "currentTime"})

Check = Callable[[Any], bool]


def context_value(d: Any, name: str) -> str | None:
    """Unleash's resolveContextValue: the top level, then ``properties``; None when absent or empty."""
    if not isinstance(d, Mapping):
        return None
    value = d.get(name)
    if value is None and name == "userId":
        value = d.get("targetingKey")
    if value is None or value == "":
        props = d.get("properties")
        value = props.get(name) if isinstance(props, Mapping) else None
    if value is None or value == "" or isinstance(value, Mapping | list):
        return None
    return value if type(value) is str else to_string(value)


def normalized(group: str, identifier: str, modulus: int = 100, seed: int = 0) -> int:
    """Unleash's normalizedValue: 1..modulus."""
    return mmh3.hash(f"{group}:{identifier}", seed, False) % modulus + 1


def js_number(value: Any) -> float:
    """JavaScript's Number() of a context or constraint value (NaN when it is not one, or absent)."""
    return math.nan if value is None else float(to_number(value))


def parse_date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)


def semver_key(value: Any) -> tuple[Any, ...] | None:
    """A sort key with SemVer 2.0 precedence (build metadata ignored); None when not a version."""
    if not isinstance(value, str):
        return None
    m = _SEMVER.fullmatch(value.strip())
    if m is None:
        return None
    core = (int(m[1]), int(m[2]), int(m[3]))
    if m[4] is None:
        return (*core, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in m[4].split("."))
    return (*core, 0, ids)


# -- constraints -----------------------------------------------------------------------------------


def _values(spec: Mapping[str, Any], path: str) -> list[str]:
    values = spec.get("values")
    if values is None:
        values = [] if spec.get("value") is None else [spec["value"]]
    if not isinstance(values, list) or len(values) > MAX_VALUES:
        raise LogicError(f"{path}.values", f"a list of at most {MAX_VALUES} values")
    return [v if type(v) is str else to_string(v) for v in values]


def _single(spec: Mapping[str, Any], path: str) -> Any:
    if "value" in spec and spec["value"] is not None:
        return spec["value"]
    values = spec.get("values")
    if isinstance(values, list) and values:
        return values[0]
    return None


def compile_constraint(spec: Any, path: str, clock: Callable[[], float]) -> Check:
    if not isinstance(spec, Mapping):
        raise LogicError(path, "a constraint is an object")
    name = spec.get("contextName")
    op = spec.get("operator")
    if not isinstance(name, str) or not name:
        raise LogicError(f"{path}.contextName", "a constraint names its context field")
    if not isinstance(op, str):
        raise LogicError(f"{path}.operator", "a constraint has an operator")
    inverted = spec.get("inverted", False) is True
    fold = spec.get("caseInsensitive", False) is True
    check = _constraint(op, name, spec, path, fold, clock)
    if check is None:
        return lambda d: False  # Unleash: an operator it does not know never holds, inverted or not
    if inverted:
        return lambda d: not check(d)
    return check


def _constraint(
    op: str, name: str, spec: Mapping[str, Any], path: str, fold: bool, clock: Callable[[], float]
) -> Check | None:
    if op in ("IN", "NOT_IN"):
        members = frozenset(_values(spec, path))
        if op == "IN":
            return lambda d: context_value(d, name) in members
        return lambda d: context_value(d, name) not in members
    if op in ("STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH"):
        values = [v.lower() for v in _values(spec, path)] if fold else _values(spec, path)
        test: Callable[[str, str], bool] = {
            "STR_CONTAINS": lambda s, v: v in s,
            "STR_STARTS_WITH": str.startswith,
            "STR_ENDS_WITH": str.endswith,
        }[op]

        def string_check(d: Any) -> bool:
            s = context_value(d, name)
            if s is None:
                return False
            if fold:
                s = s.lower()
            return any(test(s, v) for v in values)

        return string_check
    if op.startswith("NUM_"):
        compare = _NUMERIC.get(op)
        if compare is None:
            return None
        bound = js_number(_single(spec, path))
        if math.isnan(bound):
            return lambda d: False
        return lambda d: not math.isnan(x := js_number(context_value(d, name))) and compare(x, bound)
    if op in ("DATE_AFTER", "DATE_BEFORE"):
        moment = parse_date(_single(spec, path))
        if moment is None:
            return lambda d: False
        after = op == "DATE_AFTER"

        def date_check(d: Any) -> bool:
            raw = context_value(d, "currentTime")
            now = parse_date(raw) if raw is not None else datetime.fromtimestamp(clock(), UTC)
            if now is None:
                return False
            return now > moment if after else now < moment

        return date_check
    if op.startswith("SEMVER_"):
        order = _SEMVER_OPS.get(op)
        if order is None:
            return None
        version = semver_key(_single(spec, path))
        if version is None:
            return lambda d: False
        return lambda d: (v := semver_key(context_value(d, name))) is not None and order(v, version)
    if op == "REGEX":
        pattern = _single(spec, path)
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
            raise LogicError(f"{path}.value", f"a regular expression of at most {MAX_PATTERN} characters")
        try:
            options = re2.Options()
            options.case_sensitive = not fold
            options.log_errors = False
            regex = re2.compile(pattern, options)
        except re2.error:
            return lambda d: False  # as the SDKs treat a pattern they cannot compile
        return lambda d: (s := context_value(d, name)) is not None and regex.search(s) is not None
    if op == "IN_CIDR":
        networks = []
        for v in _values(spec, path):
            try:
                networks.append(ipaddress.ip_network(v.strip(), strict=False))
            except ValueError:
                continue

        def cidr_check(d: Any) -> bool:
            raw = context_value(d, name)
            if raw is None:
                return False
            try:
                address = ipaddress.ip_address(raw.strip())
            except ValueError:
                return False
            return any(address.version == n.version and address in n for n in networks)

        return cidr_check
    return None


_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "NUM_EQ": lambda a, b: a == b,
    "NUM_GT": lambda a, b: a > b,
    "NUM_GTE": lambda a, b: a >= b,
    "NUM_LT": lambda a, b: a < b,
    "NUM_LTE": lambda a, b: a <= b,
}
_SEMVER_OPS: dict[str, Callable[[tuple[Any, ...], tuple[Any, ...]], bool]] = {
    "SEMVER_EQ": lambda a, b: a == b,
    "SEMVER_GT": lambda a, b: a > b,
    "SEMVER_LT": lambda a, b: a < b,
    "SEMVER_GTE": lambda a, b: a >= b,
    "SEMVER_LTE": lambda a, b: a <= b,
}


# -- strategies ------------------------------------------------------------------------------------


def _percentage(params: Mapping[str, Any], name: str) -> float:
    value = js_number(params.get(name, 0))
    return 0.0 if math.isnan(value) else value


def _list(params: Mapping[str, Any], name: str) -> list[str]:
    raw = params.get(name, "")
    return [p.strip() for p in to_string(raw).split(",") if p.strip()] if raw is not None else []


def _random_id() -> str:
    return str(random.randint(1, 100))


def _activation(name: str, params: Mapping[str, Any], group_default: str) -> Check:
    if name == "default":
        return lambda d: True
    if name == "userWithId":
        users = frozenset(_list(params, "userIds"))
        return lambda d: context_value(d, "userId") in users
    if name in ("gradualRolloutUserId", "gradualRolloutSessionId"):
        field = "userId" if name == "gradualRolloutUserId" else "sessionId"
        percentage = _percentage(params, "percentage")
        group = to_string(params.get("groupId") or group_default)
        return lambda d: (v := context_value(d, field)) is not None and normalized(group, v) <= percentage
    if name == "gradualRolloutRandom":
        percentage = _percentage(params, "percentage")
        return lambda d: random.randint(1, 100) <= percentage
    if name == "flexibleRollout":
        percentage = _percentage(params, "rollout")
        group = to_string(params.get("groupId") or group_default)
        stickiness = to_string(params.get("stickiness") or "default")

        def rollout(d: Any) -> bool:
            v: str | None
            if stickiness == "default":
                v = context_value(d, "userId") or context_value(d, "sessionId") or _random_id()
            elif stickiness == "random":
                v = _random_id()
            else:
                v = context_value(d, stickiness)
            return v is not None and normalized(group, v) <= percentage

        return rollout
    if name == "remoteAddress":
        exact: set[str] = set()
        networks = []
        for entry in _list(params, "IPs"):
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    continue
            else:
                exact.add(entry)

        def remote(d: Any) -> bool:
            raw = context_value(d, "remoteAddress")
            if raw is None:
                return False
            if raw in exact:
                return True
            try:
                address = ipaddress.ip_address(raw)
            except ValueError:
                return False
            return any(address.version == n.version and address in n for n in networks)

        return remote
    if name == "applicationHostname":
        hosts = frozenset(h.lower() for h in _list(params, "hostNames"))
        here = (os.environ.get("HOSTNAME") or platform.node()).lower()
        return lambda d: here in hosts
    return lambda d: False  # a custom strategy this process does not implement


def _strategy(c: Any, args: list[Any], path: str, depth: int) -> Fn:
    spec = args[0] if len(args) == 1 else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise LogicError(path, "unleash_strategy takes one strategy object with a name")
    params = spec.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise LogicError(f"{path}.parameters", "parameters is an object")
    constraints = spec.get("constraints") or []
    if not isinstance(constraints, list) or len(constraints) > MAX_CONSTRAINTS:
        raise LogicError(f"{path}.constraints", f"a list of at most {MAX_CONSTRAINTS} constraints")
    checks = [compile_constraint(x, f"{path}.constraints[{i}]", c.clock) for i, x in enumerate(constraints)]
    active = _activation(spec["name"], params, c.flag_key)
    if not checks:
        return active
    return lambda d: all(check(d) for check in checks) and active(d)


def _variant(c: Any, args: list[Any], path: str, depth: int) -> Fn:
    spec = args[0] if len(args) == 1 else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("variants"), list):
        raise LogicError(path, "unleash_variant takes one object with a variants list")
    variants = spec["variants"]
    if len(variants) > MAX_VARIANTS:
        raise LogicError(f"{path}.variants", f"at most {MAX_VARIANTS} variants")
    group = to_string(spec.get("groupId") or c.flag_key)
    otherwise = spec.get("otherwise")
    if otherwise is not None and not isinstance(otherwise, str):
        raise LogicError(f"{path}.otherwise", "otherwise names a variant")
    keys: list[str] = []
    weights: list[int] = []
    overrides: list[tuple[str, frozenset[str], str]] = []
    for i, v in enumerate(variants):
        where = f"{path}.variants[{i}]"
        if not isinstance(v, Mapping) or not isinstance(v.get("key"), str):
            raise LogicError(where, "a variant is an object with the key it serves")
        weight = v.get("weight", 0)
        if type(weight) is not int or weight < 0:
            raise LogicError(f"{where}.weight", "a weight is a non-negative integer")
        keys.append(v["key"])
        weights.append(weight)
        for j, o in enumerate(v.get("overrides") or []):
            if not isinstance(o, Mapping) or not isinstance(o.get("contextName"), str):
                raise LogicError(f"{where}.overrides[{j}]", "an override names a context field")
            overrides.append((o["contextName"], frozenset(_values(o, f"{where}.overrides[{j}]")), v["key"]))
    total = sum(weights)
    first = variants[0] if variants else {}
    stickiness = to_string(first.get("stickiness") or spec.get("stickiness") or "default")
    running: list[tuple[int, str]] = []
    acc = 0
    for key, weight in zip(keys, weights, strict=True):
        if weight:
            acc += weight
            running.append((acc, key))

    def pick(d: Any) -> str | None:
        for field, values, key in overrides:
            if context_value(d, field) in values:
                return key
        if total <= 0:
            return otherwise
        if stickiness == "default":
            seed = (
                context_value(d, "userId")
                or context_value(d, "sessionId")
                or context_value(d, "remoteAddress")
                or _random_id()
            )
        else:
            seed = context_value(d, stickiness) or _random_id()
        target = normalized(group, seed, total, VARIANT_SEED)
        for upto, key in running:
            if target <= upto:
                return key
        return otherwise

    return pick


UNLEASH_OPERATORS: Mapping[str, Extension] = {
    "unleash_strategy": _strategy,
    "unleash_variant": _variant,
}

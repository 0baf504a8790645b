"""Import the classic flag JSON (the shape many Consul-KV setups use).

    {"newCheckoutFlow": {"type": "percentage", "percentage": 25},
     "betaFeatures":    {"type": "userList", "users": ["u1", "u2"]},
     "darkMode":        {"type": "boolean", "enabled": true},
     "newRecommendationEngine": {"type": "gradualRollout",
                                 "startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-01T00:00:00Z"},
     "premiumFeatures": {"type": "userAttribute", "attribute": "subscriptionTier",
                         "operator": "in", "values": ["premium", "enterprise"]},
     "experimentalApi": {"type": "percentage", "percentage": 10, "value": {"version": "v2"}}}

Imported flags keep the format's bucketing (``bucketing: legacy-md5``:
``md5(userId + flagName)``, first 8 hex digits as an integer, modulo 100), so
migrating does not reshuffle who is in a rollout. A flag with a ``value``
serves it to the users it enables and the caller's default to the rest; the
others serve true/false. The user id is the context's ``targetingKey``, else
``userId``, else ``sessionId``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confmesh.errors import InvalidArgument
from confmesh.flags.formats import FormatProblem, refusal
from confmesh.flags.model import Flag, parse_flag

CLASSIC_TYPES = {"percentage", "userList", "boolean", "gradualRollout", "userAttribute"}
CLASSIC_OPERATORS = {"equals", "contains", "in", "regex"}


def is_classic(document: Mapping[str, Any]) -> bool:
    """True for the classic shape: some entry has a classic ``type`` and none has confmesh's ``variants``.

    Decided by shape, not by validity, so a classic file with one bad entry is read as classic and that
    entry is blamed (not another, valid entry under the confmesh format's rules).
    """
    entries = list(document.values())
    return (
        bool(entries)
        and all(isinstance(v, Mapping) and "variants" not in v for v in entries)
        and any(isinstance(kind := v.get("type"), str) and kind in CLASSIC_TYPES for v in entries)
    )


def _convert(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    kind = spec.get("type")
    has_value = "value" in spec
    variants: dict[str, Any] = {"on": spec["value"]} if has_value else {"on": True, "off": False}
    off: str | None = None if has_value else "off"
    flag: dict[str, Any] = {
        "key": name,
        "description": str(spec.get("description", "")),
        "variants": variants,
        "default_variant": off,
        "off_variant": off,
        "bucketing": "legacy-md5",
    }
    if kind == "boolean":
        enabled = spec.get("enabled")
        if not isinstance(enabled, bool):
            raise InvalidArgument("a boolean flag needs 'enabled': true or false", field=name)
        flag["default_variant"] = "on" if enabled else off
    elif kind == "percentage":
        pct = spec.get("percentage")
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
            raise InvalidArgument("'percentage' must be a number from 0 to 100", field=name)
        flag["rules"] = [
            {
                "id": "percentage",
                "serve": {
                    "split": [{"variant": "on", "percent": pct}, {"variant": off, "percent": 100 - pct}]
                },
            }
        ]
    elif kind == "userList":
        users = spec.get("users")
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise InvalidArgument("'users' must be a list of strings", field=name)
        if users:
            flag["targets"] = [{"variant": "on", "values": users}]
    elif kind == "gradualRollout":
        flag["rules"] = [
            {
                "id": "gradualRollout",
                "serve": {
                    "rollout": {
                        "variant": "on",
                        "other": off,
                        "start": spec.get("startDate"),
                        "end": spec.get("endDate"),
                    }
                },
            }
        ]
    elif kind == "userAttribute":
        op = spec.get("operator")
        if op not in CLASSIC_OPERATORS:
            raise InvalidArgument(
                f"operator {op!r} is not one of {', '.join(sorted(CLASSIC_OPERATORS))}", field=name
            )
        values = spec.get("values")
        if isinstance(values, (str, int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list) or not values:
            raise InvalidArgument("'values' must be a non-empty list", field=name)
        flag["rules"] = [
            {
                "id": "userAttribute",
                "clauses": [{"attribute": spec.get("attribute"), "op": op, "values": values}],
                "serve": {"variant": "on"},
            }
        ]
    else:
        raise InvalidArgument(f"unknown classic flag type {kind!r}", field=name)
    return flag


def import_classic(document: Mapping[str, Any], *, source: str = "flags") -> dict[str, Flag]:
    """Convert a classic document into confmesh flags (validated); InvalidArgument lists every problem."""
    out = {}
    problems = []
    for name, spec in document.items():
        try:
            if not isinstance(spec, Mapping):
                raise InvalidArgument("expected an object", field=name)
            out[name] = parse_flag(_convert(name, spec), key=name)
        except InvalidArgument as exc:
            problems.append(FormatProblem(source, name, "", exc.message))
    if problems:
        raise refusal(problems)
    return out

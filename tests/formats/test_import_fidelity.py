"""Import then evaluate keeps every outcome: 10,000 users per rollout flag, flagd and Unleash.

Each file is imported into a real server with ``confmesh flags import``, then
evaluated from the server's stored flags with ``confmesh flags eval --env``
and compared, user by user, with the format's own evaluator on the original
file: flagd-core (``FlagdCore``, fractional v3) and Unleash's engine
(``yggdrasil-engine``, what UnleashClient evaluates with). flagd's v2 bucketing
has no maintained reference package, so it is checked against its formula.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import mmh3
import pytest

from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli

USERS = 10_000

FLAGD = {
    "flags": {
        "checkout-split": {
            "state": "ENABLED",
            "variants": {"a": "A", "b": "B", "c": "C"},
            "defaultVariant": "a",
            "targeting": {"fractional": [["a", 10], ["b", 30], ["c", 60]]},
        },
        "nested-rollout": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {
                "fractional": [
                    {"cat": [{"var": "$flagd.flagKey"}, {"var": "user.id"}]},
                    ["on", 25],
                    ["off", 75],
                ]
            },
        },
        "gated-rollout": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {
                "if": [
                    {"sem_ver": [{"var": "app.version"}, ">=", "2.0.0"]},
                    {"fractional": [{"var": "user.id"}, ["on", 1], ["off", 1]]},
                    "off",
                ]
            },
        },
    }
}

UNLEASH = {
    "version": 2,
    "segments": [
        {"id": 7, "constraints": [{"contextName": "region", "operator": "IN", "values": ["eu", "us"]}]},
    ],
    "features": [
        {
            "name": "new-checkout",
            "enabled": True,
            "strategies": [
                {
                    "name": "flexibleRollout",
                    "parameters": {"rollout": "37", "stickiness": "userId", "groupId": "checkout"},
                },
            ],
        },
        {
            "name": "pricing-test",
            "enabled": True,
            "strategies": [
                {
                    "name": "flexibleRollout",
                    "parameters": {"rollout": "80", "stickiness": "default", "groupId": "pricing"},
                    "segments": [7],
                },
            ],
            "variants": [
                {
                    "name": "control",
                    "weight": 500,
                    "stickiness": "default",
                    "payload": {"type": "string", "value": "1"},
                },
                {
                    "name": "cheaper",
                    "weight": 300,
                    "stickiness": "default",
                    "payload": {"type": "string", "value": "2"},
                },
                {"name": "bundle", "weight": 200, "stickiness": "default"},
            ],
        },
        {
            "name": "session-ramp",
            "enabled": True,
            "strategies": [
                {"name": "gradualRolloutSessionId", "parameters": {"percentage": "12", "groupId": "ramp"}},
            ],
        },
        {
            "name": "banner",
            "enabled": True,
            "strategies": [
                {
                    "name": "flexibleRollout",
                    "parameters": {"rollout": "50", "stickiness": "tenant", "groupId": "banner"},
                    "variants": [
                        {"name": "red", "weight": 1, "stickiness": "tenant"},
                        {"name": "blue", "weight": 3, "stickiness": "tenant"},
                    ],
                },
            ],
        },
    ],
}


def flagd_contexts() -> list[dict[str, Any]]:
    versions = ["1.9.9", "2.0.0", "2.4.1", "v3.0", "10.0.0"]
    return [
        {"targetingKey": f"user-{n}", "user": {"id": f"user-{n}"}, "app": {"version": versions[n % 5]}}
        for n in range(USERS)
    ]


def unleash_contexts() -> list[dict[str, Any]]:
    regions = ["eu", "us", "apac"]
    return [
        {
            "userId": f"user-{n}",
            "sessionId": f"s-{n * 7}",
            "properties": {"region": regions[n % 3], "tenant": f"t{n}"},
        }
        for n in range(USERS)
    ]


async def import_and_eval(
    server: ConfmeshServer, tmp: Path, document: dict[str, Any], fmt: str, env: str, *extra: str
) -> dict[str, list[dict[str, Any]]]:
    source = tmp / f"{fmt}.json"
    source.write_text(json.dumps(document))
    code, out, err = await cli(
        server.address, "flags", "import", str(source), "--env", env, "--format", fmt, *extra
    )
    assert code == 0, err
    contexts = flagd_contexts() if fmt == "flagd" else unleash_contexts()
    lines = tmp / f"{fmt}-{env}.jsonl"
    lines.write_text("".join(json.dumps(c) + "\n" for c in contexts))
    keys = list(document["flags"]) if fmt == "flagd" else [f["name"] for f in document["features"]]
    results = {}
    for key in keys:
        code, out, err = await cli(
            server.address, "flags", "eval", key, "--env", env, "--contexts", str(lines), "--json"
        )
        assert code == 0, err
        results[key] = [json.loads(line) for line in out.splitlines()]
        assert len(results[key]) == USERS
    return results


@pytest.mark.slow
async def test_flagd_import_keeps_flagd_cores_buckets(server: ConfmeshServer, tmp_path: Path) -> None:
    from openfeature.contrib.tools.flagd.core import FlagdCore
    from openfeature.evaluation_context import EvaluationContext

    ours = await import_and_eval(server, tmp_path, FLAGD, "flagd", "v3", "--fractional", "v3")
    core = FlagdCore()
    core.set_flags(copy.deepcopy(FLAGD))  # it writes into the document it is given
    contexts = flagd_contexts()
    for key, rows in ours.items():
        resolve = core.resolve_string_value if key == "checkout-split" else core.resolve_boolean_value
        moved = []
        for ctx, row in zip(contexts, rows, strict=True):
            attrs = {k: v for k, v in ctx.items() if k != "targetingKey"}
            want = resolve(key, None, EvaluationContext(targeting_key=ctx["targetingKey"], attributes=attrs))
            if (row["value"], row["variant"]) != (want.value, want.variant):
                moved.append((ctx["targetingKey"], row["variant"], want.variant))
        assert not moved, f"{key}: {len(moved)} of {USERS} users differ, e.g. {moved[:3]}"
        assert len({r["variant"] for r in rows}) > 1, f"{key} did not split"


@pytest.mark.slow
async def test_flagd_import_keeps_v2_buckets(server: ConfmeshServer, tmp_path: Path) -> None:
    ours = await import_and_eval(server, tmp_path, FLAGD, "flagd", "v2")

    def bucket(value: str, weights: list[tuple[str, int]]) -> str:
        # flagd v2, from its spec: MurmurHash3_x86_32(seed 0) of the UTF-8 string, (h * total) >> 32.
        h = mmh3.hash(value.encode(), 0, False)
        point, running = (h * sum(w for _, w in weights)) >> 32, 0
        for name, w in weights:
            running += w
            if point < running:
                return name
        raise AssertionError("unreachable")

    for n, ctx in enumerate(flagd_contexts()):
        tk = ctx["targetingKey"]
        assert ours["checkout-split"][n]["variant"] == bucket(
            "checkout-split" + tk, [("a", 10), ("b", 30), ("c", 60)]
        )
        assert ours["nested-rollout"][n]["variant"] == bucket(
            "nested-rollout" + tk, [("on", 25), ("off", 75)]
        )
        version = ctx["app"]["version"]
        gated = bucket(tk, [("on", 1), ("off", 1)]) if version not in ("1.9.9",) else "off"
        assert ours["gated-rollout"][n]["variant"] == gated, (ctx, ours["gated-rollout"][n])


@pytest.mark.slow
async def test_unleash_import_keeps_unleash_outcomes(server: ConfmeshServer, tmp_path: Path) -> None:
    from yggdrasil_engine.engine import UnleashEngine

    ours = await import_and_eval(server, tmp_path, UNLEASH, "unleash", "prod")
    engine = UnleashEngine()
    engine.take_state(json.dumps(UNLEASH))
    contexts = unleash_contexts()
    for key, rows in ours.items():
        moved = []
        for ctx, row in zip(contexts, rows, strict=True):
            enabled = engine.is_enabled(key, ctx).is_enabled
            value = row["value"]
            if isinstance(value, dict):
                variant = engine.get_variant(key, ctx)
                v = variant.variant
                got = (value["feature_enabled"], value["name"], value["enabled"], value.get("payload"))
                want = (enabled, v.name, v.enabled, v.payload or None)
            else:
                got, want = (value, None), (enabled, None)
            if got != want:
                moved.append((ctx["userId"], got, want))
        assert not moved, f"{key}: {len(moved)} of {USERS} users differ, e.g. {moved[:3]}"
        outcomes = {json.dumps(r["value"], sort_keys=True) for r in rows}
        assert len(outcomes) > 1, f"{key} did not split"

"""Flag evaluation cost, side by side: confmesh vs flagd core, LaunchDarkly, Unleash, a floor.

    pip install -e '.[bench]' && python bench/flags_eval.py [--repeats 7]

Four cases, each evaluated for 10,000 pre-built contexts (user ids user-0 ..
user-9999): a boolean that is on; a 25% rollout bucketed by user id; the
attribute `tier` in ["premium", "enterprise"] (half the users premium); and a
flagd flag as imported (`--format flagd --fractional v3`): `fractional` over the
nested attribute `user.id`, 25/75, which only confmesh and flagd-core run.
Each measurement is the time of one pass over the 10,000 contexts divided by
10,000; the table reports the median of --repeats passes (after one warm-up
pass) in ns per evaluation, and ratios against the fastest other SDK and the
floor: a minimal evaluator written by hand (flag looked up by key in a dict,
one rule applied, murmur3 for the rollout, a bare value, no details object).
Every row pays the same per-call wrapper, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import mmh3

N = 10_000
CLASSIC_CASES = ("boolean", "rollout25", "attribute")
CASES = (*CLASSIC_CASES, "fractional")
NESTED = {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.id"}]}, ["on", 25], ["off", 75]]}
Evaluate = Callable[[Any], Any]


def users() -> list[str]:
    return [f"user-{n}" for n in range(N)]


def tier(n: int) -> str:
    return ("premium", "free", "enterprise", "basic")[n % 4]


# -- confmesh ----------------------------------------------------------------------


def confmesh_setup(details: bool, counting: bool) -> dict[str, tuple[Evaluate, list[Any]]]:
    from confmesh.flags import FlagEvaluator, UsageCounter

    bool_variants = {"on": True, "off": False}
    ev = FlagEvaluator(
        {
            "boolean": {"key": "boolean", "variants": bool_variants, "default_variant": "on"},
            "rollout25": {"key": "rollout25", "variants": bool_variants, "default_variant": "off",
                          "rules": [{"serve": {"split": [{"variant": "on", "percent": 25},
                                                         {"variant": "off", "percent": 75}]}}]},
            "attribute": {"key": "attribute", "variants": bool_variants, "default_variant": "off",
                          "rules": [{"clauses": [{"attribute": "tier", "op": "in",
                                                  "values": ["premium", "enterprise"]}],
                                     "serve": {"variant": "on"}}]},
            "fractional": {"key": "fractional", "variants": bool_variants, "default_variant": "off",
                           "targeting": NESTED, "bucketing": "murmur3-cbor"},
        },
        usage=UsageCounter() if counting else None,
    )  # fmt: skip
    ctxs = [{"targetingKey": u, "tier": tier(n), "user": {"id": u}} for n, u in enumerate(users())]
    out = {}
    for case in CASES:
        if details:
            out[case] = ((lambda c, k=case: ev.get_bool_details(k, False, c)), ctxs)
        else:
            out[case] = ((lambda c, k=case: ev.get_bool(k, False, c)), ctxs)
    return out


# -- flagd in-process core ---------------------------------------------------------------


def flagd_setup() -> dict[str, tuple[Evaluate, list[Any]]]:
    from openfeature.contrib.tools.flagd.core import FlagdCore
    from openfeature.evaluation_context import EvaluationContext

    core = FlagdCore()
    variants = {"on": True, "off": False}
    core.set_flags({"flags": {
        "boolean": {"state": "ENABLED", "variants": variants, "defaultVariant": "on"},
        "rollout25": {"state": "ENABLED", "variants": variants, "defaultVariant": "off",
                      "targeting": {"fractional": [["on", 25], ["off", 75]]}},
        "attribute": {"state": "ENABLED", "variants": variants, "defaultVariant": "off",
                      "targeting": {"if": [{"in": [{"var": "tier"}, ["premium", "enterprise"]]},
                                           "on", "off"]}},
        "fractional": {"state": "ENABLED", "variants": variants, "defaultVariant": "off",
                       "targeting": NESTED},
    }})  # fmt: skip
    ctxs = [
        EvaluationContext(targeting_key=u, attributes={"tier": tier(n), "user": {"id": u}})
        for n, u in enumerate(users())
    ]
    return {case: ((lambda c, k=case: core.resolve_boolean_value(k, False, c)), ctxs) for case in CASES}


# -- LaunchDarkly with its TestData source ------------------------------------------------------


def launchdarkly_setup() -> dict[str, tuple[Evaluate, list[Any]]]:
    from ldclient import Context, LDClient
    from ldclient.config import Config
    from ldclient.integrations.test_data import FlagBuilder, TestData

    class RolloutFlag(FlagBuilder):
        """TestData has no percentage rollouts: the same flag with a 25% fallthrough rollout."""

        def _build(self, version: int) -> dict[str, Any]:
            flag: dict[str, Any] = super()._build(version)
            flag["fallthrough"] = {
                "rollout": {
                    "variations": [{"variation": 0, "weight": 25_000}, {"variation": 1, "weight": 75_000}]
                }
            }
            return flag

    td = TestData.data_source()
    td.update(td.flag("boolean").variation_for_all(True))
    td.update(RolloutFlag("rollout25").boolean_flag())
    td.update(
        td.flag("attribute")
        .boolean_flag()
        .fallthrough_variation(False)
        .if_match("tier", "premium", "enterprise")
        .then_return(True)
    )
    client = LDClient(
        Config("bench-sdk-key", update_processor_class=td, send_events=False, diagnostic_opt_out=True)
    )
    ctxs = [Context.builder(u).set("tier", tier(n)).build() for n, u in enumerate(users())]
    evaluate = client.variation_detail
    return {case: ((lambda c, k=case: evaluate(k, c, False)), ctxs) for case in CLASSIC_CASES}


# -- Unleash in offline bootstrap mode ------------------------------------------------------------


def unleash_setup() -> dict[str, tuple[Evaluate, list[Any]]]:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    cache = FileCache("confmesh-bench", directory=tempfile.mkdtemp())
    cache.bootstrap_from_dict({"version": 1, "features": [
        {"name": "boolean", "enabled": True, "strategies": [{"name": "default"}]},
        {"name": "rollout25", "enabled": True, "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": "25", "stickiness": "userId",
                                                       "groupId": "rollout25"}}]},
        {"name": "attribute", "enabled": True, "strategies": [{"name": "default", "constraints": [
            {"contextName": "tier", "operator": "IN", "values": ["premium", "enterprise"]}]}]},
    ]})  # fmt: skip
    client = UnleashClient(
        url="http://127.0.0.1:9",
        app_name="confmesh-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
        refresh_interval=3600,
    )
    client.initialize_client(fetch_toggles=False)
    ctxs = [{"userId": u, "properties": {"tier": tier(n)}} for n, u in enumerate(users())]
    return {case: ((lambda c, k=case: client.is_enabled(k, c)), ctxs) for case in CLASSIC_CASES}


# -- the floor: a dict and murmur3, by hand ---------------------------------------------------


def floor_setup() -> dict[str, tuple[Evaluate, list[Any]]]:
    """The least an evaluator can do: look the flag up by key, apply its one rule, return a value."""
    flags: dict[str, tuple[str, Any]] = {
        "boolean": ("static", True),
        "rollout25": ("percent", 2500),
        "attribute": ("in", ("tier", frozenset({"premium", "enterprise"}))),
        "fractional": ("nested", 25),
    }
    murmur = mmh3.hash

    def evaluate(key: str, ctx: dict[str, Any]) -> bool:
        kind, arg = flags[key]
        if kind == "static":
            return bool(arg)
        if kind == "percent":
            return ((murmur(key + ctx["targetingKey"], 0, False) * 10_000) >> 32) < arg
        if kind == "nested":  # flagd v3: murmur3 of the canonical CBOR of the string
            raw = (key + ctx["user"]["id"]).encode()
            return ((murmur(bytes((0x60 + len(raw),)) + raw, 0, False) * 100) >> 32) < arg
        attr, values = arg
        return ctx.get(attr) in values

    ctxs = [{"targetingKey": u, "tier": tier(n), "user": {"id": u}} for n, u in enumerate(users())]
    return {case: ((lambda c, k=case: evaluate(k, c)), ctxs) for case in CASES}


def measure(fn: Evaluate, ctxs: list[Any], repeats: int) -> float:
    for c in ctxs:  # warm-up pass
        fn(c)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for c in ctxs:
            fn(c)
        samples.append((time.perf_counter_ns() - start) / len(ctxs))
    return statistics.median(samples)


SDKS: dict[str, Callable[[], dict[str, tuple[Evaluate, list[Any]]]]] = {
    "confmesh get_bool_details (client.flags: counting)": lambda: confmesh_setup(True, True),
    "confmesh get_bool_details": lambda: confmesh_setup(True, False),
    "confmesh get_bool": lambda: confmesh_setup(False, False),
    "openfeature-flagd-core": flagd_setup,
    "launchdarkly-server-sdk (TestData)": launchdarkly_setup,
    "UnleashClient (offline bootstrap)": unleash_setup,
    "floor: dict + murmur3": floor_setup,
}
OTHERS = ("openfeature-flagd-core", "launchdarkly-server-sdk (TestData)", "UnleashClient (offline bootstrap)")
HEADLINE = "confmesh get_bool_details (client.flags: counting)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(
        f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or '?'}; "
        f"{N} contexts per pass, median of {args.repeats} passes, ns per evaluation\n"
    )
    results: dict[str, dict[str, float]] = {}
    for name, setup in SDKS.items():
        cases = setup()
        results[name] = {case: measure(fn, ctxs, args.repeats) for case, (fn, ctxs) in cases.items()}
    width = max(len(n) for n in results)
    print(f"{'':<{width}}  " + "  ".join(f"{c:>10}" for c in CASES))
    for name, row in results.items():
        cells = (f"{row[c]:>10.0f}" if c in row else f"{'-':>10}" for c in CASES)
        print(f"{name:<{width}}  " + "  ".join(cells))
    print()
    for name in (HEADLINE, "confmesh get_bool_details"):
        for case in CASES:
            fastest = min((o for o in OTHERS if case in results[o]), key=lambda o: results[o][case])
            speedup = results[fastest][case] / results[name][case]
            floor = results[name][case] / results["floor: dict + murmur3"][case]
            print(f"{name} / {case}: {speedup:.1f}x faster than {fastest}; {floor:.2f}x the floor")


if __name__ == "__main__":
    main()

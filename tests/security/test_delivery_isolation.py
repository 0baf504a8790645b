"""No caller can stall delivery: each attack of the delivery-isolation issue, as an attacker runs it,
while a bystander's Watch pushes and health checks keep their latency, and what the attacker got is
only what it may get. The server and the attacker are processes of their own; real etcd, real HTTP,
real gRPC. One server of each kind serves the module's attacks in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import EtcdHandle
from tests.security.isolation import Target, attack, target

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PUSH_P99_MS = 250
HEALTH_P99_MS = 100
SECONDS = 4.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def targets(
    etcd: EtcdHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Any]]:
    """Started on first use: `policy` (tokens, an approval rule over qa, 1,000 flags), `open` (no
    policy), `mtls` (mutual TLS on both listeners)."""
    started: dict[str, Any] = {}
    contexts: list[Any] = []

    async def get(kind: str) -> Target:
        if kind not in started:
            context = target(etcd.endpoint, f"/isolation-{kind}", tmp_path_factory.mktemp(kind), kind=kind)
            started[kind] = await context.__aenter__()
            contexts.append(context)
        return started[kind]  # type: ignore[no-any-return]

    yield {"get": get}
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


def within_bounds(figures: dict[str, float]) -> None:
    assert figures["pushes"] >= 8 and figures["health_checks"] >= 40, figures
    assert figures["push_p99_ms"] < PUSH_P99_MS, figures
    assert figures["health_p99_ms"] < HEALTH_P99_MS, figures
    assert figures["health_failures"] == 0 and figures["push_failures"] == 0, figures


def only(answers: dict[str, int], *allowed: str) -> None:
    assert answers and set(answers) <= set(allowed), answers


# (defect number, attack, server kind, concurrency, what the attacker must have got)
ATTACKS = [
    (1, "explain", "policy", 5),
    (2, "ofrep", "policy", 32),
    (3, "rebinding", "open", 8),
    (4, "proposals", "policy", 4),
    (5, "defaults", "policy", 4),
    (6, "slowloris", "policy", 1),
    (7, "live", "policy", 1),
    (8, "scheduled", "policy", 1),  # and 11: the scheduler's fairness
    (9, "propose-big", "policy", 3),
    (10, "tls", "mtls", 4),
    (12, "kill", "policy", 4),
    (13, "big-change", "policy", 4),
    (14, "ofrep-nits", "policy", 8),
    (15, "mirror", "policy", 3),
    (16, "consul", "policy", 4),
]


@pytest.mark.parametrize(("defect", "mode", "kind", "concurrency"), ATTACKS, ids=[a[1] for a in ATTACKS])
async def test_an_attack_leaves_delivery_untouched(
    targets: dict[str, Any], defect: int, mode: str, kind: str, concurrency: int
) -> None:
    t = await targets["get"](kind)
    seen, result = await attack(t, mode, SECONDS, concurrency)
    figures, answers, facts = seen.summary(), result["answers"], result["facts"]
    print(f"defect {defect} {mode}: {figures} {answers} {facts}")
    within_bounds(figures)
    CHECKS[mode](answers, facts)


def _flood(answers: dict[str, int], facts: dict[str, Any]) -> None:
    """Served within its limits, refused beyond them, never left hanging."""
    only(answers, "200", "429")
    assert answers.get("429", 0) > 0, answers


def _rebinding(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "421")


def _proposals(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "ok", "too_many_open")
    assert answers["ok"] <= 50 and answers["too_many_open"] > 0, answers  # its own share, no more
    assert facts["other_team_proposed"], facts


def _defaults(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "approval_required")


def _slowloris(answers: dict[str, int], facts: dict[str, Any]) -> None:
    assert facts["held_open"] <= 256, facts  # one address's share of the listener's connections


def _live(answers: dict[str, int], facts: dict[str, Any]) -> None:
    assert facts["streams"] == {"200": 8, "429": 4}, facts
    assert facts["revoked_stream_denied"] and facts["revoked_stream_ended_s"] < 3, facts


def _scheduled(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "ok")
    assert facts["other_team_waited_s"] < 2.0, facts
    assert facts["revoked_change_applied"] is False, facts


def _propose_big(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "400", "413", "429")


def _tls(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "handshake_refused", "unavailable")


def _kill(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "ok", "approval_required", "resource_exhausted")
    assert facts["kill_writes"] == 0 and facts["inverted_still_enabled"] is True, facts


def _big_change(answers: dict[str, int], facts: dict[str, Any]) -> None:
    only(answers, "ok", "resource_exhausted", "console_403", "console_429")
    assert answers["ok"] > 0 and answers["console_403"] > 0, answers


def _mirror(answers: dict[str, int], facts: dict[str, Any]) -> None:
    """Floods are ended, an honest relay is served; never more than the grant: no prod key, no prod
    instance in the fleet view."""
    only(answers, "RESOURCE_EXHAUSTED")
    assert facts["prod_refused"] == "PERMISSION_DENIED" and "honest_ended" not in facts, facts
    assert facts["relayed_prod"] == 0 and facts["relayed_staging"] == 10_000, facts


def _consul(answers: dict[str, int], facts: dict[str, Any]) -> None:
    """Listings answered in full up to the caller's share of answer bytes, then 429; the idle blocking
    queries never woken; prod refused; writes within the value limit taken."""
    only(answers, "list_200", "list_429", "put200k_200", "put400k_400")
    assert answers["list_200"] > 20 and answers["list_429"] > 0 and answers["put400k_400"] > 0, answers
    assert facts["listed"] >= 2000 and facts["prod_read"] == 403, facts


def _ofrep_nits(answers: dict[str, int], facts: dict[str, Any]) -> None:
    kinds = {k for k in answers if k.startswith("kind")}
    assert kinds <= {"kind0_400", "kind0_429", "kind1_200", "kind1_429", "kind2_400", "kind2_429"}, answers


CHECKS = {
    "explain": _flood,
    "ofrep": _flood,
    "rebinding": _rebinding,
    "proposals": _proposals,
    "defaults": _defaults,
    "slowloris": _slowloris,
    "live": _live,
    "scheduled": _scheduled,
    "propose-big": _propose_big,
    "tls": _tls,
    "kill": _kill,
    "big-change": _big_change,
    "ofrep-nits": _ofrep_nits,
    "mirror": _mirror,
    "consul": _consul,
}

"""No caller can stall delivery: floods of costly control-plane requests, as an attacker sends them,
while a bystander's Watch pushes and health checks keep their latency (issue: isolate the delivery
plane). The server and the attacker are processes of their own; real etcd, real HTTP, real gRPC."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EtcdHandle
from tests.security.isolation import attack, target

pytestmark = pytest.mark.slow

PUSH_P99_MS = 250
HEALTH_P99_MS = 100


@pytest.mark.parametrize(("mode", "concurrency"), [("explain", 5), ("ofrep", 32)])
async def test_a_flood_of_costly_requests_leaves_delivery_untouched(
    etcd: EtcdHandle, prefix: str, tmp_path: Path, mode: str, concurrency: int
) -> None:
    async with target(etcd.endpoint, prefix, tmp_path) as t:
        seen, answers = await attack(t, mode, seconds=6.0, concurrency=concurrency)
    figures = seen.summary()
    assert figures["pushes"] >= 10 and figures["health_checks"] >= 50, figures
    assert figures["push_p99_ms"] < PUSH_P99_MS, (figures, answers)
    assert figures["health_p99_ms"] < HEALTH_P99_MS, (figures, answers)
    assert figures["health_failures"] == 0, figures
    # The attacker was served within its limits and refused beyond them, never left hanging.
    assert answers.get("0", 0) == 0, answers
    assert answers.get("429", 0) > 0, answers
    print(mode, figures, answers)

"""`confmesh diff`: exit 0 without unexpected drift, 1 with it, 2 on errors."""

from __future__ import annotations

import json
from pathlib import Path

from confmesh.client import AdminClient
from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli


async def test_diff_exit_codes_and_expected_overrides(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    addr = server.address
    await admin.put("database", {"pool": 10, "host": "db"})
    for env, host in (("staging", "db-staging"), ("production", "db-prod")):
        await admin.put("database.host", host, env=env)
    await admin.put("replicas", 2, env="staging", service="orders")
    await admin.put("replicas", 2, env="production", service="orders")
    expect = tmp_path / "expected-overrides.yaml"
    expect.write_text("expected:\n  - database.host\n")

    code, out, err = await cli(
        addr, "diff", "--env", "staging", "--env", "production", "--expect", str(expect)
    )
    assert code == 0, err
    assert "expected  (environment)  database.host" in out and "0 unexpected" in out
    code, out, _ = await cli(addr, "diff", "--env", "staging", "--env", "production", "--service", "orders")
    assert code == 1 and "DRIFT     orders  database.host" in out

    # A real drift: a pool size that only production changed.
    await admin.put("database.pool", 50, env="production", service="orders")
    code, out, _ = await cli(addr, "diff", "--env", "staging", "--env", "production", "--service", "orders",
                             "--expect", str(expect), "--json")  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert {(r["key"], r["staging"], r["production"], r["expected"]) for r in rows} == {
        ("database.host", "db-staging", "db-prod", True), ("database.pool", 10, 50, False),
    }  # fmt: skip
    code, _, _ = await cli(addr, "diff", "--env", "staging", "--env", "production", "--service", "orders",
                           "--allow", "database.*")  # fmt: skip
    assert code == 0
    code, _, err = await cli(addr, "diff", "--env", "staging")
    assert code == 2 and "exactly two --env" in err
    code, _, err = await cli(
        addr, "diff", "--env", "a", "--env", "b", "--expect", str(tmp_path / "missing.yaml")
    )
    assert code == 2

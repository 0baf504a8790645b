"""A scoped reader reads only what its grant covers, through every CLI path that reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import cli
from tests.conftest import Tenants

SECRET = "prod-payments-pw-31c8"  # pragma: allowlist secret


async def test_a_staging_reader_never_sees_prod_plaintext(tenants: Tenants, tmp_path: Path) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put("db.password", SECRET, env="prod", service="payments")
        await admin.put("db.password", "staging-pw", env="staging", service="payments")
        await admin.put("region", "region-eu-west-9", env="prod")
    token = tenants.tokens["staging-reader"]
    directory = tmp_path / "d" / "prod" / "payments"
    directory.mkdir(parents=True)
    (directory / "a.yaml").write_text("db:\n  password: x\n")
    attempts = {
        "apply --dry-run": ("apply", "-f", str(tmp_path / "d"), "--dry-run"),
        "diff": ("diff", "--env", "prod", "--env", "staging"),
        "diff --service": ("diff", "--env", "prod", "--env", "staging", "--service", "payments"),
        "get": ("get", "db.password", "--env", "prod", "--service", "payments"),
        "audit": ("audit", "--json"),
        "history": ("history", "--env", "prod", "--service", "payments"),
        "status": ("status",),
        "rollout list": ("rollout", "list"),
    }
    for name, args in attempts.items():
        code, out, err = await cli(tenants.address, "--token", token, *args)
        assert SECRET not in out + err, f"{name} showed prod/payments' plaintext"
        assert "region-eu-west-9" not in out + err, f"{name} showed env/prod"
    # What it may read, it reads.
    code, out, err = await cli(tenants.address, "--token", token, "get", "db.password",
                               "--env", "staging", "--service", "payments")  # fmt: skip
    assert code == 0 and "staging-pw" in out, err
    code, out, err = await cli(tenants.address, "--token", token, "audit", "--json")
    assert code == 0 and "staging-pw" in out and "service/prod" not in out, err


async def test_a_flags_evaluations_over_time_follow_the_flag_read_grant(tenants: Tenants) -> None:
    """GetFlagUsage's `flag` series: a reader of staging flags reads staging's, never prod's."""
    from confmesh import errors
    from confmesh.client import AdminClient

    async with AdminClient(tenants.address, token=tenants.tokens["staging-reader"]) as reader:
        await reader.flag_usage("staging", 3600, flag="checkout")
        with pytest.raises(errors.PermissionDenied):
            await reader.flag_usage("prod", 3600, flag="checkout")

"""Service schemas: writes that would break a service's config are refused; out-of-band breakage
is not served."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from confmesh.client import AdminClient, ConfigClient, FailedPrecondition, InvalidArgument, NotFound
from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle
from tests.helpers import eventually


class Database(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str
    max_retries: int = Field(default=3, ge=0, le=10)
    password: SecretStr | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database: Database


async def seed(admin: AdminClient) -> None:
    await admin.put("database.host", "db-orders", env="prod", service="orders")
    await admin.put("database.max_retries", 3, env="prod")


async def test_writes_that_break_a_registered_schema_are_refused(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    with pytest.raises(InvalidArgument, match="required key is missing"):  # the config lacks database.host
        await admin.put_schema("prod", "orders", Settings.model_json_schema())
    await seed(admin)
    code, _, err = await cli(server.address, "schema", "push", "--env", "prod", "--service", "orders",
                               "--model", "tests.integration.test_schemas:Settings")  # fmt: skip
    assert code == 0, err
    assert (await admin.get_schema("prod", "orders"))["title"] == "Settings"
    # A value a nearer layer hides cannot break anything: the service sets the host itself.
    await admin.put("database.host", 42)
    before = await admin.resolve("prod", "orders")

    # A typo is refused with its path, naming the service; nothing is written.
    with pytest.raises(InvalidArgument) as info:
        await admin.put("database.max_retires", 5, env="prod", service="orders")
    assert info.value.field == "database.max_retires"
    assert "config of prod/orders invalid" in info.value.message and "unknown key" in info.value.message
    # So is an out-of-range value from a layer above: the environment or the defaults.
    with pytest.raises(
        InvalidArgument, match=r"prod/orders .*database\.max_retries: 50 is greater than the maximum"
    ):
        await admin.put("database.max_retries", 50, env="prod")
    with pytest.raises(
        InvalidArgument, match=r"database\.password: invalid secret value \(.*redacted"
    ) as info:
        await admin.put("database.password", 42)  # from the defaults layer; the value is never quoted
    assert "42" not in info.value.message
    after = await admin.resolve("prod", "orders")
    assert (after.version, after.config) == (before.version, before.config)
    assert not [r for r in (await admin.audit()).records if r.revision > before.version]

    # Other services are not checked against it; the same write is fine for them.
    await admin.put("database.max_retries", 50, env="prod", service="payments")
    # A delete that uncovers a bad value from a farther layer is refused too.
    with pytest.raises(InvalidArgument, match=r"database\.host: 42 is not of type 'string'"):
        await admin.delete("database.host", env="prod", service="orders")
    # Removing the schema lifts the check.
    await admin.delete_schema("prod", "orders")
    await admin.put("database.max_retires", 5, env="prod", service="orders")
    with pytest.raises(NotFound):
        await admin.get_schema("prod", "orders")
    with pytest.raises(FailedPrecondition):
        await admin.delete_schema("prod", "orders")


async def test_out_of_band_breakage_is_not_served(
    server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str
) -> None:
    await seed(admin)
    await admin.put_schema("prod", "orders", Settings.model_json_schema())
    async with ConfigClient(server.address, environment="prod", service="orders", schema=Settings) as client:
        good = client.version
        # Written straight to etcd, bypassing the API and its checks.
        etcd.ctl("put", f"{prefix}/config/env/prod/database.max_retries", "99")

        async def violation() -> str:
            status = await admin.status()
            return " ".join(v.message for v in status.schema_violations)

        message = ""
        for _ in range(100):
            message = await violation()
            if message:
                break
            await eventually(lambda: True)
        assert "database.max_retries: 99 is greater than the maximum of 10" in message
        assert client.version == good and client.config.database.max_retries == 3
        assert client.last_rejection is None  # never offered, so never NACKed

        # A flag change still reaches the service while its config is held back.
        flag = await admin.put_flags(
            "prod", {"kill": {"variants": {"on": True, "off": False}, "default_variant": "on"}}
        )
        await client.wait_for_version(flag.revision, timeout=10)
        assert client.flags.is_enabled("kill") and client.config.database.max_retries == 3

        # Fixed out of band as well: the service gets it.
        etcd.ctl("put", f"{prefix}/config/env/prod/database.max_retries", "4")
        await eventually(lambda: client.config.database.max_retries == 4, timeout=10)
        assert not (await admin.status()).schema_violations


async def test_secret_fields_are_redacted_in_audit_and_resolve(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await seed(admin)
    await admin.put_schema("prod", "orders", Settings.model_json_schema())
    plaintext = "plaintext-pw-123"  # pragma: allowlist secret
    await admin.put("database.password", plaintext, env="prod", service="orders")
    await admin.put("database.password", {"$secret": "env:ORDERS_DB"}, env="prod", service="orders")
    records = (await admin.audit(env="prod", service="orders")).records
    shown = json.dumps([str(r) for r in records])
    assert plaintext not in shown and "<redacted>" in shown and "env:ORDERS_DB" in shown
    explained = await admin.resolve("prod", "orders", "database.password")
    assert explained.config["database"]["password"] == {"$secret": "env:ORDERS_DB"}
    code, out, _ = await cli(server.address, "audit", "--env", "prod", "--service", "orders")
    assert code == 0 and plaintext not in out and "<redacted>" in out

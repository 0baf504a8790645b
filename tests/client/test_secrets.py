"""Secret references resolve in the client only: never in etcd, the server, logs or CLI output."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, field_validator

from confmesh.client import AdminClient, ConfigClient, InvalidArgument, SnapshotRejected
from confmesh.client._validation import validate
from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle
from tests.helpers import eventually

PASSWORD = "hunter2-s3cr3t-v4lue"  # pragma: allowlist secret


class Database(BaseModel):
    user: str
    password: SecretStr
    tls_key: SecretStr


class Settings(BaseModel):
    database: Database


async def test_secrets_resolve_in_the_client_and_nowhere_else(
    server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    key_file = tmp_path / "tls.key"
    key_file.write_text("KEY-MATERIAL-123\n")
    monkeypatch.setenv("TEST_DB_PASSWORD", PASSWORD)
    await admin.put("database", {"user": "orders", "password": {"$secret": "env:TEST_DB_PASSWORD"},
                                 "tls_key": {"$secret": f"file:{key_file}"}}, env="prod")  # fmt: skip
    async with ConfigClient(server.address, environment="prod", service="orders", schema=Settings) as client:
        assert client.config.database.password.get_secret_value() == PASSWORD
        assert client.config.database.tls_key.get_secret_value() == "KEY-MATERIAL-123"
        assert PASSWORD not in repr(client.config)
        assert client.raw["database"]["password"] == {"$secret": "env:TEST_DB_PASSWORD"}

        monkeypatch.delenv("TEST_DB_PASSWORD")
        changed = await admin.put("database.user", "orders2", env="prod")
        await eventually(
            lambda: client.last_rejection is not None and client.last_rejection.version == changed.revision
        )
        assert client.last_rejection is not None
        assert [i.path for i in client.last_rejection.issues] == ["database.password"]
        assert "env:TEST_DB_PASSWORD is not set" in client.last_rejection.error
        assert client.config.database.password.get_secret_value() == PASSWORD  # kept the last good

    stored = etcd.ctl("get", "--prefix", prefix)
    _, cli_out, _ = await cli(server.address, "get", "--env", "prod", "--service", "orders", "--json")
    _, status_out, _ = await cli(server.address, "status", "--json")
    for text in (stored, cli_out, status_out, caplog.text):
        assert PASSWORD not in text and "KEY-MATERIAL-123" not in text


@pytest.mark.parametrize(
    "ref",
    [{"$secret": "vault:kv/db"}, {"$secret": "env:"}, {"$secret": "file:relative/path"},
     {"$secret": "env:X", "extra": 1}, {"$secret": 42}],
)  # fmt: skip
async def test_malformed_secret_references_are_refused_at_write_time(admin: AdminClient, ref: object) -> None:
    with pytest.raises(InvalidArgument, match="a secret reference is exactly"):
        await admin.put("db.password", ref, env="prod")


class Vault(BaseModel):
    user: str
    password: SecretStr

    @field_validator("password")
    @classmethod
    def strong(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 12:
            raise ValueError(f"password {value.get_secret_value()!r} is too short")  # quotes the value
        return value


class WithSecrets(BaseModel):
    db: Vault
    api_keys: list[SecretStr] = []
    name: str = "x"


def test_rejections_never_quote_secret_fields() -> None:
    leaked = "hunter2"  # pragma: allowlist secret
    with pytest.raises(SnapshotRejected) as info:
        validate(WithSecrets, {"db": {"user": "u", "password": leaked}, "api_keys": [42], "name": ["bad"]})
    text = str(info.value) + " ".join(str(i) for i in info.value.issues)
    assert leaked not in text
    paths = {i.path: i.message for i in info.value.issues}
    assert paths["db.password"] == "invalid secret value (value_error; redacted)"  # pragma: allowlist secret
    assert paths["api_keys.0"].endswith("redacted)")
    assert "valid string" in paths["name"]  # ordinary fields keep pydantic's message

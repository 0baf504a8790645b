"""The orders settings README.md pushes with `--model orders.settings:Settings`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max: int = Field(ge=1)


class Database(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str
    pool: Pool
    password: SecretStr | None = None
    tls_key: SecretStr | None = None
    api_key: SecretStr | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database: Database

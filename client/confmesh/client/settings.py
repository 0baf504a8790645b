"""A pydantic-settings source that reads a service's resolved config from confmesh.

    class Settings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="ORDERS_", env_nested_delimiter="__", extra="forbid")
        database: Database

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            confmesh = ConfmeshSettingsSource(settings_cls, "127.0.0.1:7070", environment="prod",
                                              service="orders")
            return init_settings, env_settings, dotenv_settings, confmesh, file_secret_settings

Precedence is the tuple's order: init arguments > environment variables >
.env > confmesh > defaults in code. The config is read once, when the
settings object is built (use ConfigClient for live updates). Missing,
misspelled (with ``extra="forbid"``) or wrongly typed keys fail the start
with pydantic's ValidationError; an unreachable server raises StartupError.
"""

from __future__ import annotations

from typing import Any

import grpc
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from confmesh.digest import SCHEMES, matches
from confmesh.errors import StartupError
from confmesh.keys import Scope
from confmesh.rpc_errors import error_from_rpc
from confmesh.tls import TLSConfig, bearer_metadata, sync_channel
from confmesh.v1 import config_pb2, config_pb2_grpc
from confmesh.wire import from_struct


def fetch_config(
    target: str,
    environment: str,
    service: str,
    timeout: float = 10.0,
    tls: TLSConfig | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """The resolved config of one (environment, service), read once (hash-checked)."""
    scope = Scope.checked(environment, service)
    with sync_channel(target, tls) as channel:
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        try:
            snap = stub.GetSnapshot(
                config_pb2.GetSnapshotRequest(
                    environment=scope.environment, service=scope.service, hash_schemes=SCHEMES
                ),
                timeout=timeout,
                wait_for_ready=True,
                metadata=bearer_metadata(token),
            )
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, target)
            raise StartupError(f"cannot read config for {scope} from confmesh: {error.message}") from exc
    config, flags = from_struct(snap.config), from_struct(snap.flags)
    if not matches(snap.hash, config, flags):
        raise StartupError(f"config for {scope} does not match its hash; refusing it")
    return config


class ConfmeshSettingsSource(PydanticBaseSettingsSource):
    def __init__(
        self,
        settings_cls: type[BaseSettings],
        target: str,
        *,
        environment: str,
        service: str,
        timeout: float = 10.0,
        tls: TLSConfig | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(settings_cls)
        self.confmesh_config = fetch_config(target, environment, service, timeout, tls, token)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.confmesh_config.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.confmesh_config)


__all__ = [
    "ConfmeshSettingsSource",
    "fetch_config",
]

"""The OpenFeature SDK's own API on confmesh flags, and a pydantic-settings class on live config."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.flag_evaluation import ErrorCode, Reason
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from confmesh.client import AdminClient, ConfigClient, StartupError
from confmesh.client.openfeature import ConfmeshProvider
from confmesh.client.settings import ConfmeshSettingsSource
from confmesh.flags.decisions import Decision
from confmesh.flags.scope import request_scope
from confmesh.server import ConfmeshServer
from tests.helpers import eventually

CHECKOUT = {"variants": {"on": True, "off": False}, "default_variant": "off", "off_variant": "off",
            "rules": [{"id": "premium", "clauses": [{"attribute": "tier", "op": "in", "values": ["premium"]}],
                       "serve": {"variant": "on"}}]}  # fmt: skip


# A flag as `confmesh flags import --format flagd` stores it: JsonLogic targeting and metadata.
BANNER = {"variants": {"wide": "wide", "narrow": "narrow"}, "default_variant": "narrow",
          "targeting": {"if": [{"in": [{"var": "tier"}, ["premium"]]}, "wide", None]},
          "metadata": {"team": "growth", "ticket": 42}}  # fmt: skip


async def test_openfeature_sdk_evaluates_confmesh_flags_with_events(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put_flags(
        "prod",
        {
            "checkout": CHECKOUT,
            "limit": {"variants": {"low": 10, "high": 100}, "default_variant": "high"},
            "banner": BANNER,
        },
    )
    events: list[tuple[ProviderEvent, list[str]]] = []
    loop = asyncio.get_running_loop()

    def record(event: ProviderEvent) -> Any:
        return lambda details: loop.call_soon_threadsafe(
            events.append, (event, list((details or EventDetails(provider_name="")).flags_changed or []))
        )

    for event in (
        ProviderEvent.PROVIDER_READY,
        ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
        ProviderEvent.PROVIDER_STALE,
    ):
        api.add_handler(event, record(event))
    try:
        async with ConfigClient(server.address, environment="prod", service="orders") as client:
            api.set_provider(ConfmeshProvider(client))
            flags = api.get_client()
            premium = EvaluationContext("user-1", {"tier": "premium"})
            assert flags.get_boolean_value("checkout", False, premium) is True
            details = flags.get_boolean_details(
                "checkout", False, EvaluationContext("user-2", {"tier": "free"})
            )
            assert (details.value, details.variant, details.reason) == (False, "off", Reason.DEFAULT)
            assert flags.get_integer_value("limit", 0) == 100
            tagged = flags.get_string_details("banner", "none", premium)
            assert tagged.value == "wide"
            own = {"team": "growth", "ticket": 42, "rule": "targeting", "environment": "prod"}
            assert tagged.flag_metadata == {**own, "version": tagged.flag_metadata["version"]}
            missing = flags.get_boolean_details("ghost", True)
            assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
            wrong = flags.get_string_details("checkout", "x", premium)
            assert (wrong.value, wrong.error_code) == ("x", ErrorCode.TYPE_MISMATCH)

            changed = await admin.set_flag_enabled("checkout", False, envs=["prod"])
            await client.wait_for_version(changed.revision, timeout=5)
            assert flags.get_boolean_value("checkout", True, premium) is False
            await eventually(lambda: (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ["checkout"]) in events)

            await server.stop()  # the client loses its server: STALE
            await eventually(lambda: any(e == ProviderEvent.PROVIDER_STALE for e, _ in events), timeout=10)
            assert flags.get_boolean_value("checkout", True, premium) is False  # still evaluates locally
    finally:
        api.clear_providers()
        api.clear_hooks()


class Database(BaseModel):
    host: str
    port: int = 5432


def settings_class(address: str, **extra: Any) -> type[BaseSettings]:
    class Settings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="ORDERS_", env_nested_delimiter="__", extra="forbid")
        database: Database
        workers: int = 4

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            source = ConfmeshSettingsSource(
                settings_cls, address, environment="prod", service="orders", **extra
            )
            return init_settings, env_settings, dotenv_settings, source, file_secret_settings

    return Settings


async def test_pydantic_settings_reads_confmesh_below_env_vars(
    server: ConfmeshServer, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await admin.put("database", {"host": "db.prod", "port": 6432}, env="prod")
    await admin.put("workers", 16, env="prod", service="orders")
    Settings = settings_class(server.address)

    loaded: Any = await asyncio.to_thread(Settings)
    assert (loaded.database.host, loaded.database.port, loaded.workers) == ("db.prod", 6432, 16)

    monkeypatch.setenv("ORDERS_DATABASE__HOST", "db.override")
    loaded = await asyncio.to_thread(Settings)
    assert (loaded.database.host, loaded.database.port) == ("db.override", 6432)  # env wins, merged deeply
    loaded = await asyncio.to_thread(lambda: Settings(workers=2))
    assert loaded.workers == 2  # init arguments win

    await admin.put("wokers", 3, env="prod")  # a typo in the config store
    with pytest.raises(ValidationError, match="wokers"):
        await asyncio.to_thread(Settings)
    await admin.delete("wokers", env="prod")
    await admin.put("workers", "many", env="prod", service="orders")
    with pytest.raises(ValidationError, match="workers"):
        await asyncio.to_thread(Settings)

    Unreachable = settings_class("127.0.0.1:1", timeout=0.5)
    with pytest.raises(StartupError, match="cannot read config for prod/orders"):
        await asyncio.to_thread(Unreachable)


async def test_openfeature_opentelemetry_hook_works_alongside(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    await admin.put_flags("prod", {"checkout": CHECKOUT})
    try:
        async with ConfigClient(server.address, environment="prod", service="orders") as client:
            api.set_provider(ConfmeshProvider(client))
            api.add_hooks([TracingHook()])
            flags = api.get_client()
            with provider.get_tracer("t").start_as_current_span("request"):
                assert flags.get_boolean_value(
                    "checkout", False, EvaluationContext("u-1", {"tier": "premium"})
                )
                # Decided upstream: the hook sees the propagated decision.
                with request_scope({"checkout": Decision("checkout", False, "off", 1)}, flag_set="prod"):
                    assert (
                        flags.get_boolean_value(
                            "checkout", True, EvaluationContext("u-1", {"tier": "premium"})
                        )
                        is False
                    )
    finally:
        api.clear_providers()
        api.clear_hooks()
    (span,) = exporter.get_finished_spans()
    local, propagated = (dict(e.attributes or {}) for e in span.events)
    assert local["feature_flag.key"] == "checkout" and local["feature_flag.provider.name"] == "confmesh"
    assert (local["feature_flag.result.variant"], local["feature_flag.result.reason"]) == (
        "on",
        "targeting_match",
    )
    assert (propagated["feature_flag.result.variant"], propagated["feature_flag.result.reason"]) == (
        "off",
        "propagated",
    )

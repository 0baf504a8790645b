"""The SDK's public surface: exact ``__all__`` lists, and a sync facade that offers all of ConfigClient."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import confmesh.client
from confmesh.client import ConfigClient, SyncConfigClient

SUBMODULES = [m.name for m in pkgutil.iter_modules(confmesh.client.__path__) if not m.name.startswith("_")]
PUBLIC_MODULES = sorted(["confmesh.client", "confmesh.errors", "confmesh.flags"]
                        + [f"confmesh.client.{name}" for name in SUBMODULES])  # fmt: skip
# Constructor arguments ConfigClient keeps as attributes: the caller set them, the facade need not echo them.
SETTINGS = {
    "schema", "start_from_defaults", "startup_timeout", "backoff_initial", "backoff_max", "cache_path",
    "max_cache_age", "usage", "usage_interval", "report_interval", "tls", "tracer_provider",
}  # fmt: skip


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_exact(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), "duplicates"
    assert all(hasattr(module, n) for n in exported), [n for n in exported if not hasattr(module, n)]
    defined = {
        n for n, v in vars(module).items()
        if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == name
    }  # fmt: skip
    assert defined <= set(exported), f"defined here but not exported: {sorted(defined - set(exported))}"
    assert exported == sorted(exported), "kept sorted"


def test_the_client_package_exports_every_error() -> None:
    import confmesh.errors

    errors = {n for n in confmesh.errors.__all__ if isinstance(getattr(confmesh.errors, n), type)
              and issubclass(getattr(confmesh.errors, n), confmesh.errors.ConfmeshError)}  # fmt: skip
    assert {"PermissionDenied", "Unauthenticated"} <= errors
    assert errors <= set(confmesh.client.__all__)


def test_sync_client_takes_exactly_config_clients_arguments() -> None:
    def params(cls: type) -> list[tuple[str, object, object]]:
        sig = inspect.signature(cls.__init__)  # type: ignore[misc]
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    assert params(SyncConfigClient) == params(ConfigClient)


def test_sync_client_offers_every_member_of_config_client() -> None:
    members = {n for n in dir(ConfigClient) if not n.startswith("_")}
    client: ConfigClient[dict[str, object]] = ConfigClient("127.0.0.1:1", environment="prod", service="api")
    members |= {n for n in vars(client) if not n.startswith("_")} - SETTINGS
    missing = sorted(n for n in members if not hasattr(SyncConfigClient, n))
    assert not missing, f"SyncConfigClient lacks {missing}"

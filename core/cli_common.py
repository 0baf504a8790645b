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


def dumps(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False, sort_keys=pretty)


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
reason_option = click.option("--reason", default="", help="Why: recorded with the change.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")

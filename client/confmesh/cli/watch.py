"""`confmesh watch`: follow a scope as a client does, one JSON line per applied snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import click

from confmesh.cli.common import dumps, run


@click.command()
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--service", required=True, help="Service.")
@click.option("--instance-id", default=None, help="Instance id shown in status (default: cli-watch-...).")
@click.option(
    "--timeout",
    default=0.0,
    show_default=True,
    help="Give up if no snapshot arrives within this many seconds (0: keep trying).",
)
@click.pass_context
def watch(ctx: click.Context, env: str, service: str, instance_id: str | None, timeout: float) -> None:
    """Print one JSON line per applied snapshot (version, hash, config) until interrupted.

    While it is not connected it says so on stderr, with the reason, and keeps retrying.
    """
    from confmesh.client import ClientState, ConfigClient, default_instance_id

    server = ctx.obj["server"]

    async def body() -> None:
        client: ConfigClient[Any] = ConfigClient(
            server,
            environment=env,
            service=service,
            instance_id=instance_id or f"cli-watch-{default_instance_id()}",
            tls=ctx.obj["tls"],
            token=ctx.obj["token"],
            startup_timeout=timeout if timeout > 0 else 3600 * 24 * 365,
        )

        def show(_old: Any, _new: Any) -> None:
            click.echo(dumps({"version": client.version, "hash": client.hash, "config": client.raw}))
            sys.stdout.flush()

        async def warn_unknown_names() -> None:  # the client asks once it is connected
            if notice := await client.describe_scope():
                click.echo(f"warning: {notice}", err=True)

        closing = False  # Ctrl-C: the client closes its own stream, which is no lost connection

        def changed(state: ClientState) -> None:
            if closing:
                return
            if state is ClientState.READY:
                click.echo(f"connected to {server}", err=True)
            elif state is ClientState.STALE and not client.connected:
                click.echo(
                    f"connection to {server} lost: {client.last_error or 'closed'}; retrying", err=True
                )

        async def progress() -> None:
            said = ""
            while True:
                await asyncio.sleep(1.0)
                reason = client.last_error or "no answer yet"
                if not client.connected and reason != said:
                    click.echo(f"not connected to {server} yet: {reason}; retrying", err=True)
                    said = reason

        client.on_change(show)
        client.on_state(changed)
        click.echo(f"connecting to {server} for {env}/{service} ...", err=True)
        reporter = asyncio.create_task(progress())
        notice = asyncio.create_task(warn_unknown_names())
        try:
            async with client:
                reporter.cancel()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    closing = True
                    raise
        finally:
            for task in (reporter, notice):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(body())  # Ctrl-C: quiet, exit 130 (ConfmeshGroup)

"""`confmesh schema`: register the JSON Schema a service's config must satisfy."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, reason_option
from confmesh.errors import InvalidArgument
from confmesh.textfiles import read_text


@click.group()
def schema() -> None:
    """Service schemas: writes that would break a service's config are refused."""


def load_model_schema(spec: str) -> dict[str, Any]:
    """The JSON Schema of a pydantic model named ``package.module:Class``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgument(f"--model takes package.module:Class, got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        model: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"cannot load the model {spec!r}: {exc}") from exc
    finally:
        sys.path.pop(0)
    if not hasattr(model, "model_json_schema"):
        raise InvalidArgument(f"{spec} is not a pydantic model")
    result: dict[str, Any] = model.model_json_schema()
    return result


@schema.command("push")
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--service", required=True, help="Service.")
@click.option(
    "--model", default=None, help="A pydantic model, package.module:Class (its JSON Schema is pushed)."
)
@click.option("--file", "file", default=None, type=click.Path(dir_okay=False), help="A JSON Schema file.")
@reason_option
@admin_command
async def push(admin: Any, env: str, service: str, model: str | None, file: str | None, reason: str) -> None:
    """Register the schema for ENV/SERVICE; refused if the current config does not satisfy it."""
    if (model is None) == (file is None):
        raise InvalidArgument("give exactly one of --model or --file")
    if model is not None:
        document = load_model_schema(model)
    else:
        try:
            document = json.loads(await asyncio.to_thread(read_text, str(file)))
        except ValueError as exc:
            raise InvalidArgument(f"{file}: {exc}") from exc
    result = await admin.put_schema(env, service, document, reason=reason)
    click.echo(f"schema for {env}/{service} registered (revision {result.revision})")


@schema.command("get")
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--service", required=True, help="Service.")
@admin_command
async def get(admin: Any, env: str, service: str) -> None:
    """Print the registered schema of ENV/SERVICE."""
    click.echo(dumps(await admin.get_schema(env, service), pretty=True))


@schema.command("delete")
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--service", required=True, help="Service.")
@reason_option
@admin_command
async def delete(admin: Any, env: str, service: str, reason: str) -> None:
    """Stop checking writes against ENV/SERVICE's schema."""
    result = await admin.delete_schema(env, service, reason=reason)
    click.echo(f"schema for {env}/{service} removed (revision {result.revision})")

"""The orders service: a FastAPI app with typed, hot-reloaded config and a checkout flag.

    python examples/orders/app.py --confmesh 127.0.0.1:7070 --inventory 127.0.0.1:50051

* Typed config: ``OrdersSettings`` validates every snapshot before it is
  applied; a bad write is rejected (NACK) and the last good config stays.
* Hot reload: the database pool follows ``database.pool_size`` without a restart.
* One decision per request: ``new-checkout`` is evaluated here, at the edge,
  and ``inventory`` honours it through the gRPC interceptors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import uvicorn
from fastapi import FastAPI, Request
from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel, ConfigDict, Field

from confmesh.client import ConfigClient, StartupError
from confmesh.client.interceptors import FlagChannel
from confmesh.client.middleware import FlagScopeMiddleware
from confmesh.client.telemetry import instrument_flags
from confmesh.wire import from_struct


class Database(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    pool_size: int = Field(ge=1, le=200)


class OrdersSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database: Database


class Pool:
    """Stands in for a database connection pool that can be resized live."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.resizes = 0

    def resize(self, size: int) -> None:
        if size != self.size:
            self.size, self.resizes = size, self.resizes + 1


class PlaceOrder(BaseModel):
    user: str
    sku: str
    qty: int = Field(ge=1)


def create_app(config: ConfigClient[OrdersSettings], inventory: str) -> FastAPI:
    """The app over a started ConfigClient (main starts it first, so a service with no valid config
    exits with one line instead of a server traceback)."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        instrument_flags()
        pool = Pool(config.config.database.pool_size)
        config.on_change(lambda old, new: pool.resize(new.database.pool_size))
        channel = FlagChannel(grpc.aio.insecure_channel(inventory))
        reserve = channel.unary_unary(
            "/inventory.Inventory/Reserve",
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        state.update(config=config, pool=pool, reserve=reserve)
        try:
            yield
        finally:
            await channel.close(None)

    app = FastAPI(title="orders", lifespan=lifespan)
    # The edge: flag baggage sent by outside callers is dropped.
    app.add_middleware(FlagScopeMiddleware)

    @app.post("/orders")
    async def place(order: PlaceOrder, request: Request) -> dict[str, Any]:
        config: ConfigClient[OrdersSettings] = state["config"]
        decision = config.flags.get_bool_details("new-checkout", False, {"targetingKey": order.user})
        reply = await state["reserve"](
            json_format.ParseDict(order.model_dump(), struct_pb2.Struct()), timeout=5
        )
        return {
            "flow": "new" if decision.value else "classic",
            "reason": decision.reason.value,
            "flag_version": decision.flag_version,
            # Numbers as inventory wrote them (900, not 900.0), keys sorted (a Struct has no order).
            "inventory": dict(sorted(from_struct(reply).items())),
        }

    @app.get("/status")
    async def status() -> dict[str, Any]:
        config: ConfigClient[OrdersSettings] = state["config"]
        pool: Pool = state["pool"]
        return {
            "pid": os.getpid(),
            "version": config.version,
            "pool_size": pool.size,
            "resizes": pool.resizes,
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confmesh", default="127.0.0.1:7070")
    parser.add_argument("--inventory", default="127.0.0.1:50051")
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--env", default="prod")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.confmesh, args.inventory, args.listen, args.env))
    except StartupError as exc:  # no valid config to start on: say why in one line
        sys.exit(f"orders cannot start: {exc.message}")


async def serve(confmesh: str, inventory: str, listen: str, environment: str) -> None:
    host, _, port = listen.rpartition(":")
    config: ConfigClient[OrdersSettings] = ConfigClient(
        confmesh, environment=environment, service="orders", schema=OrdersSettings
    )
    await config.start()
    try:
        app = create_app(config, inventory)
        await uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="warning")).serve()
    finally:
        await config.close()


if __name__ == "__main__":
    main()

"""The inventory service: a gRPC server that honours the checkout decision made upstream.

    python examples/inventory/service.py --confmesh 127.0.0.1:7070 --listen 127.0.0.1:50051

Its one method, ``/inventory.Inventory/Reserve``, takes and returns a
``google.protobuf.Struct`` (a real protobuf message, so the example needs no
code generation). The flag ``new-checkout`` changes how a reservation is
made; the interceptor makes this service act on the decision ``orders``
made for the same request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel, ConfigDict, Field

from confmesh.client import ConfigClient, StartupError
from confmesh.client.interceptors import FlagServerInterceptor
from confmesh.client.propagation import Trust
from confmesh.client.telemetry import instrument_flags

log = logging.getLogger("inventory")


class Reservations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: int = Field(ge=1, le=86_400)


class InventorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reservations: Reservations


class Inventory:
    def __init__(self, config: ConfigClient[InventorySettings]) -> None:
        self.config = config
        self.stock: dict[str, int] = {}

    async def reserve(self, request: struct_pb2.Struct, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        order = json_format.MessageToDict(request)
        decision = self.config.flags.get_bool_details("new-checkout", False, {"targetingKey": order["user"]})
        flow = "new" if decision.value else "classic"
        self.stock[order["sku"]] = self.stock.get(order["sku"], 100) - int(order["qty"])
        reply = {
            "reserved": True,
            "flow": flow,
            "reason": decision.reason.value,
            "flag_version": decision.flag_version,
            "ttl_seconds": self.config.config.reservations.ttl_seconds,
            "left": self.stock[order["sku"]],
        }
        return json_format.ParseDict(reply, struct_pb2.Struct())


async def serve(confmesh: str, listen: str, environment: str) -> None:
    instrument_flags()
    config_client = ConfigClient(
        confmesh, environment=environment, service="inventory", schema=InventorySettings
    )
    async with config_client as config:
        inventory = Inventory(config)
        # Internal listener: only other services reach it. With mutual TLS,
        # use Trust(["orders.<env>.svc"]) to trust exactly the orders service.
        server = grpc.aio.server(interceptors=[FlagServerInterceptor(Trust.internal())])
        handler = grpc.unary_unary_rpc_method_handler(
            inventory.reserve,
            request_deserializer=struct_pb2.Struct.FromString,
            response_serializer=struct_pb2.Struct.SerializeToString,
        )
        service = grpc.method_handlers_generic_handler("inventory.Inventory", {"Reserve": handler})
        server.add_generic_rpc_handlers([service])
        server.add_insecure_port(listen)
        await server.start()
        print(f"inventory serving on {listen}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confmesh", default="127.0.0.1:7070")
    parser.add_argument("--listen", default="127.0.0.1:50051")
    parser.add_argument("--env", default="prod")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(serve(args.confmesh, args.listen, args.env))
    except StartupError as exc:  # no valid config to start on: say why in one line
        sys.exit(f"inventory cannot start: {exc.message}")


if __name__ == "__main__":
    main()

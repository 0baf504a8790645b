"""Put, Delete and Apply: config writes, validated and audited in one transaction."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.flags.model import keyed
from confmesh.keys import Layer, LayerKind
from confmesh.merge import JSONValue
from confmesh.server.admin_base import (
    AdminBase,
    write,
)
from confmesh.v1 import admin_pb2
from confmesh.wire import changes_from_pb, from_value, layer_from_pb


def _put(layer: Layer, key: str, value: JSONValue) -> ChangeSpec:
    """A put as stored: a flag definition carries its own key, as PutFlags stores it."""
    return ChangeSpec(layer, key, keyed(key, value) if layer.kind is LayerKind.FLAGS else value)


class WriteRPCs(AdminBase):
    @write
    async def Put(
        self, request: admin_pb2.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        if not request.HasField("value"):
            raise errors.InvalidArgument("value is required", field="value")
        change = _put(layer_from_pb(request.layer), request.key, from_value(request.value))
        return await self._write(context, [change], request.context, "Put")

    @write
    async def Delete(
        self, request: admin_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        change = ChangeSpec(layer_from_pb(request.layer), request.key, delete=True)
        return await self._write(context, [change], request.context, "Delete")

    @write
    async def Apply(
        self, request: admin_pb2.ApplyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        changes = changes_from_pb(request.changes)
        return await self._write(context, changes, request.context, "Apply")

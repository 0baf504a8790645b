"""Registered JSON Schemas: push, read, delete."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.keys import Layer, Scope
from confmesh.merge import resolve
from confmesh.server.admin_base import (
    AdminBase,
    read,
    write,
)
from confmesh.server.audit import AuditEntry
from confmesh.server.record_kinds import SCHEMAS
from confmesh.server.records import (
    write_record,
)
from confmesh.server.schemas import SchemaRecord, ServiceSchema
from confmesh.server.writer import (
    check_schemas,
)
from confmesh.v1 import admin_pb2
from confmesh.wire import from_struct, to_struct


class SchemaRPCs(AdminBase):
    async def _schema_record(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        environment: str,
        service: str,
        ctx: admin_pb2.ChangeContext,
        document: dict[str, Any] | None,
    ) -> admin_pb2.WriteResponse:
        """Register (`document`) or remove (None) a service's schema, audited in the same transaction."""
        scope = Scope.checked(environment, service)
        verb = "register" if document is not None else "remove"
        layer = Layer.svc(scope.environment, scope.service)
        caller = self._allow(context, lambda g: g.can_write(layer), f"{verb} the schema of {scope}")
        encoded = None
        if document is not None:
            registrant = self._actor(caller, ctx)
            schema = ServiceSchema(scope, document, registrant)
            config = resolve(self.store.entries(x) for x in scope.layers)
            await check_schemas(
                [(schema, config, False)], f"registering this schema (the current config of {scope})"
            )
            encoded = SchemaRecord(document, registrant).encode()
        source = f"{'PutSchema' if document is not None else 'DeleteSchema'} {scope}"
        audit = AuditEntry(self._actor(caller, ctx), ctx.reason, source)
        layout = self.writer.layout
        revision = await write_record(
            self.writer.etcd,
            layout,
            layout.schema_key(scope),
            encoded,
            audit,
            must_exist=None if document is not None else True,
        )
        return await self._settled(revision, f"schema/{scope}")

    @write
    async def PutSchema(
        self, request: admin_pb2.PutSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        return await self._schema_record(
            context, request.environment, request.service, request.context, from_struct(request.schema)
        )

    @read
    async def GetSchema(
        self, request: admin_pb2.GetSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetSchemaResponse:
        scope = Scope.checked(request.environment, request.service)
        self._allow(context, lambda g: g.can_read(scope), f"read the schema of {scope}")
        schema = self.store.records(SCHEMAS).get(scope)
        if schema is None:
            raise errors.NotFound(f"no schema registered for {scope}")
        return admin_pb2.GetSchemaResponse(
            schema=to_struct(schema.document), revision=self.store.revisions(SCHEMAS).get(scope, 0)
        )

    @write
    async def DeleteSchema(
        self, request: admin_pb2.DeleteSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        return await self._schema_record(context, request.environment, request.service, request.context, None)

"""Bearer tokens: create, list, revoke."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.server.access import Role, new_token
from confmesh.server.admin_base import (
    READ_YOUR_WRITES_TIMEOUT,
    AdminBase,
    grant_from_pb,
    grant_to_pb,
    read,
    to_timestamp,
)
from confmesh.server.record_kinds import TOKENS
from confmesh.server.records import (
    delete_token,
    store_token,
)
from confmesh.v1 import admin_pb2


class TokenRPCs(AdminBase):
    @read
    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CreateTokenResponse:
        caller = self._allow(context, lambda g: g.role is Role.ADMIN, "create tokens")
        grant = grant_from_pb(request.grant)
        if any(t.name == request.name for t in self.store.records(TOKENS).values()):
            raise errors.FailedPrecondition(
                f"a token named {request.name!r} exists; revoke it first", field="name", code="exists"
            )
        record, token = new_token(request.name, grant, caller.identity)
        revision = await store_token(
            self.writer.etcd,
            self.writer.layout,
            record,
            actor=self._actor(caller, request.context),
            reason=request.context.reason,
        )
        await self.source.wait_for_revision(revision, READ_YOUR_WRITES_TIMEOUT)
        return admin_pb2.CreateTokenResponse(token=token, id=record.id, revision=revision)

    @read
    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListTokensResponse:
        self._allow(context, lambda g: g.role is Role.ADMIN, "list tokens")
        resp = admin_pb2.ListTokensResponse()
        for t in sorted(self.store.records(TOKENS).values(), key=lambda t: t.name):
            resp.tokens.add(
                id=t.id,
                name=t.name,
                grant=grant_to_pb(t.grant),
                created_at=to_timestamp(t.created_at),
                created_by=t.created_by,
            )
        return resp

    @read
    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        caller = self._allow(context, lambda g: g.role is Role.ADMIN, "revoke tokens")
        record = next((t for t in self.store.records(TOKENS).values() if t.name == request.name), None)
        if record is None:
            raise errors.NotFound(f"no token named {request.name!r}", field="name")
        revision = await delete_token(
            self.writer.etcd,
            self.writer.layout,
            record,
            actor=self._actor(caller, request.context),
            reason=request.context.reason,
        )
        return await self._settled(revision, f"token/{record.name}")

"""ListAudit: the audit log, as the caller's grant may see it."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.keys import Layer, check_name
from confmesh.server.access import Grant
from confmesh.server.admin_base import (
    AdminBase,
    read,
    to_timestamp,
)
from confmesh.server.audit import AuditFilter, read_audit
from confmesh.v1 import admin_pb2
from confmesh.wire import layer_to_pb, to_value


class AuditRPCs(AdminBase):
    @read
    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListAuditResponse:
        caller = self._allow(context, Grant.can_operate, "read the audit log")
        if request.environment:
            check_name(request.environment, "environment")
        if request.service:
            check_name(request.service, "service")
        limit = request.limit or 100
        if not 0 < limit <= 1000:
            raise errors.InvalidArgument("limit must be 1-1000", field="limit")
        which = AuditFilter(request.environment, request.service, request.key_prefix, request.actor)
        records = await read_audit(
            self.writer.etcd, self.writer.layout, which, limit, visible=self._audit_view(caller)
        )
        resp = admin_pb2.ListAuditResponse()
        for audit_id, revision, entry in records:
            rec = resp.records.add(
                id=audit_id,
                revision=revision,
                at=to_timestamp(entry["at"]),
                actor=entry["actor"],
                reason=entry["reason"],
                source=entry.get("source", ""),
                trace_parent=entry.get("trace", ""),
            )
            for ch in entry["changes"]:
                msg = rec.changes.add(
                    layer=layer_to_pb(Layer.from_path(ch["layer"])), key=ch["key"], op=ch["op"]
                )
                if "old" in ch:
                    msg.old_value.CopyFrom(to_value(ch["old"]))
                if "new" in ch:
                    msg.new_value.CopyFrom(to_value(ch["new"]))
        return resp

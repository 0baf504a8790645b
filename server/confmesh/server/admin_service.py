"""AdminService: validated writes, resolved reads with explanations, status, flags, schemas, history,
rollouts and tokens; one mixin per domain (``server/admin_*.py``) on a shared base (``admin_base``)."""

from __future__ import annotations

from confmesh.server.admin_audit import AuditRPCs
from confmesh.server.admin_base import AdminBase
from confmesh.server.admin_changes import ChangeRPCs
from confmesh.server.admin_flags import FlagRPCs
from confmesh.server.admin_history import HistoryRPCs
from confmesh.server.admin_reads import ReadRPCs
from confmesh.server.admin_rollouts import RolloutRPCs
from confmesh.server.admin_schemas import SchemaRPCs
from confmesh.server.admin_tokens import TokenRPCs
from confmesh.server.admin_writes import WriteRPCs


class AdminService(
    WriteRPCs,
    ReadRPCs,
    FlagRPCs,
    AuditRPCs,
    TokenRPCs,
    SchemaRPCs,
    HistoryRPCs,
    RolloutRPCs,
    ChangeRPCs,
):
    """Every AdminService RPC; construct it as ``AdminBase`` is constructed."""


__all__ = ["AdminBase", "AdminService"]

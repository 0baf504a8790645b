"""Who may do what: caller identities, the policy that grants them rights, bearer tokens.

A caller is identified by a bearer token (``authorization: Bearer cmt_…``),
else by the names its verified client certificate carries (mutual TLS).
Grants come from the policy file for certificate identities and from the
token's own record for tokens. Tokens live in etcd under ``P/meta/tokens/``
holding only a SHA-256 of their secret, so the server keeps them in memory
through its ordinary watch, and a revocation reaches every replica at once.

Without a policy file nothing is enforced (the development default); with
one, every call needs an identity with a grant that covers it.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from confmesh import errors
from confmesh.identity import peer_identities
from confmesh.keys import Layer, LayerKind, Scope, check_name
from confmesh.merge import loads_json
from confmesh.server.limits import Throttled

log = logging.getLogger(__name__)

TOKEN_PREFIX = "cmt_"
DENIAL_AUDIT_INTERVAL = 10.0


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    WRITER = "writer"  # write the layers its scopes match, flags of its environments; read those
    READER = "reader"  # read the scopes it matches, status and audit
    SERVICE = "service"  # watch its own (environment, service) snapshot, read its environment's flags


class Grant(BaseModel):
    """What one identity may do.

    ``scopes`` are patterns over layer paths: ``defaults``, ``<env>`` (the
    environment layer) and ``<env>/<service>``, with ``*`` globs (``prod/*``:
    every service layer in prod; ``*``: everything). ``flags`` lists the
    environments whose flags a writer may change (``*``: all).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    environment: str = ""
    service: str = ""
    scopes: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> Grant:
        if self.role is Role.SERVICE:
            try:
                check_name(self.environment, "environment")
                check_name(self.service, "service")
            except errors.InvalidArgument as exc:
                raise ValueError(f"a service grant needs its environment and service: {exc.message}") from exc
            if self.scopes or self.flags:
                raise ValueError("a service grant takes environment and service, not scopes or flags")
        elif self.environment or self.service:
            raise ValueError(f"a {self.role} grant takes scopes (and flags), not environment/service")
        if self.role is Role.ADMIN and (self.scopes or self.flags):
            raise ValueError("an admin grant covers everything; drop scopes and flags")
        if self.role is Role.READER and self.flags:
            raise ValueError("a reader cannot change flags")
        if self.role in (Role.WRITER, Role.READER) and not (self.scopes or self.flags):
            raise ValueError(f"a {self.role} grant needs scopes or flags")
        return self

    def describe(self) -> str:
        if self.role is Role.SERVICE:
            return f"service {self.environment}/{self.service}"
        parts = [str(self.role)]
        if self.scopes:
            parts.append("scopes " + ",".join(self.scopes))
        if self.flags:
            parts.append("flags " + ",".join(self.flags))
        return " ".join(parts)

    def _matches(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.scopes)

    def can_watch(self, scope: Scope) -> bool:
        if self.role is Role.SERVICE:
            return (self.environment, self.service) == (scope.environment, scope.service)
        return self.can_read(scope)

    def can_read(self, scope: Scope) -> bool:
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.SERVICE:
            return self.can_watch(scope)
        return any(self._matches(p) for p in (scope.environment, f"{scope.environment}/{scope.service}"))

    def can_write(self, layer: Layer) -> bool:
        if self.role is Role.ADMIN:
            return True
        if self.role is not Role.WRITER:
            return False
        if layer.kind is LayerKind.FLAGS:
            return any(fnmatch.fnmatchcase(layer.environment, pattern) for pattern in self.flags)
        return self._matches(scope_path(layer))

    def _covers_environment(self, environment: str) -> bool:
        """Some scope pattern reaches a layer of `environment` (its own or one of its services')."""
        return any(
            p != "defaults" and fnmatch.fnmatchcase(environment, p.partition("/")[0]) for p in self.scopes
        )

    def can_read_flags(self, environment: str) -> bool:
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.SERVICE:
            return self.environment == environment
        return any(fnmatch.fnmatchcase(environment, p) for p in self.flags) or self._covers_environment(
            environment
        )

    def can_read_layer(self, layer: Layer) -> bool:
        """Read one layer's raw entries: the layers the scopes it may read resolve through.

        The defaults layer is shared by every scope, so any config grant reads
        it; an environment layer is read by grants reaching that environment;
        a service layer only by grants covering that service.
        """
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.SERVICE:
            return False  # a service reads its own resolved snapshot, not layers
        if layer.kind is LayerKind.FLAGS:
            return self.can_read_flags(layer.environment)
        if layer.kind is LayerKind.DEFAULTS:
            return bool(self.scopes)
        if layer.kind is LayerKind.ENVIRONMENT:
            return self._covers_environment(layer.environment)
        return self.can_read(Scope(layer.environment, layer.service))

    def can_carry(self, pattern: str) -> bool:
        """Relay the scopes `pattern` names (as a policy file writes them): a pattern within one of
        the grant's own. Services carry nothing; what is carried is filtered key by key besides."""
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.SERVICE:
            return False
        return any(fnmatch.fnmatchcase(pattern, granted) for granted in self.scopes)

    def can_operate(self) -> bool:
        """Status, audit, usage: everyone but services."""
        return self.role is not Role.SERVICE


class Rule(enum.StrEnum):
    """How one RPC is authorized; every RPC the server serves has exactly one (``RULES``)."""

    WRITE_LAYERS = "write every layer the request changes (admin, or a writer whose grant covers them)"
    READ_SCOPE = "read the named (environment, service): admin, or a reader/writer whose scopes cover it"
    READ_LAYER = "read the named layer: admin, or a reader/writer reaching it (Grant.can_read_layer)"
    READ_FLAGS = "read an environment's flags: admin, its service identities, readers/writers reaching it"
    WATCH_SCOPE = "watch one (environment, service): admin, readers/writers covering it, its own service"
    OPERATE = "everyone but services; the answer holds only what the caller's grant may read"
    RELAY = "relay: everyone but services, for scope patterns within its grant; carries only what it reads"
    ADMIN = "admins only"
    PUBLIC = "anyone (health checks and reflection carry no configuration)"


_ADMIN = "/confmesh.v1.AdminService/"
_CONFIG = "/confmesh.v1.ConfigService/"
RULES: dict[str, Rule] = {
    **{_ADMIN + m: Rule.WRITE_LAYERS for m in (
        "Put", "Delete", "Apply", "PutFlags", "DeleteFlag", "SetFlagEnabled", "PutSchema", "DeleteSchema",
        "Rollback", "Revert", "StartRollout", "UpdateRollout", "PromoteRollout", "AbortRollout")},
    **{_ADMIN + m: Rule.WRITE_LAYERS for m in (
        "ProposeChange", "ReviewChange", "ScheduleChange", "ApplyChange", "CancelChange")},
    _ADMIN + "GetChange": Rule.READ_LAYER,
    _ADMIN + "ListChanges": Rule.OPERATE,
    _ADMIN + "Resolve": Rule.READ_SCOPE,
    _ADMIN + "GetScopeStatus": Rule.READ_SCOPE,
    _ADMIN + "GetSchema": Rule.READ_SCOPE,
    _ADMIN + "GetLayer": Rule.READ_LAYER,
    _ADMIN + "GetFlags": Rule.READ_FLAGS,
    **{_ADMIN + m: Rule.OPERATE for m in ("GetStatus", "GetFlagUsage", "ListAudit", "ListRollouts")},
    **{_ADMIN + m: Rule.ADMIN for m in ("CreateToken", "ListTokens", "RevokeToken")},
    _CONFIG + "Watch": Rule.WATCH_SCOPE,
    "/confmesh.v1.RelayService/Mirror": Rule.RELAY,
    _CONFIG + "GetSnapshot": Rule.WATCH_SCOPE,
    _CONFIG + "DescribeScope": Rule.WATCH_SCOPE,
    "/flagd.sync.v1.FlagSyncService/SyncFlags": Rule.READ_FLAGS,
    "/flagd.sync.v1.FlagSyncService/FetchAllFlags": Rule.READ_FLAGS,
    "/flagd.sync.v1.FlagSyncService/GetMetadata": Rule.READ_FLAGS,  # any identity without a selector
    "/grpc.health.v1.Health/Check": Rule.PUBLIC,
    "/grpc.health.v1.Health/Watch": Rule.PUBLIC,
    "/grpc.health.v1.Health/List": Rule.PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule.PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Rule.PUBLIC,
}  # fmt: skip


def unruled(methods: Sequence[str]) -> list[str]:
    """The methods among `methods` that no rule covers (the server refuses to start with any)."""
    return [m for m in methods if m not in RULES]


def scope_path(layer: Layer) -> str:
    """A config layer as grants name it: ``defaults``, ``<env>`` or ``<env>/<service>``."""
    if layer.kind is LayerKind.DEFAULTS:
        return "defaults"
    if layer.kind is LayerKind.SERVICE:
        return f"{layer.environment}/{layer.service}"
    return layer.environment


class Bypass(enum.StrEnum):
    """Writes an approval rule may let through without a change request (emergencies)."""

    KILL = "kill"  # SetFlagEnabled(false): switching a flag off
    REVERT = "revert"
    ROLLBACK = "rollback"


class ApprovalRule(BaseModel):
    """Changes to these layers go through a change request with `approvers` approvals.

    ``scopes`` are grant patterns over config layers (``prod``, ``prod/*``), ``flags``
    environment patterns over flag layers. Approvers are identities other than the author
    who may write every layer the change touches.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    scopes: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    approvers: int = Field(default=1, ge=1, le=10)
    allow: tuple[Bypass, ...] = (Bypass.KILL,)

    @model_validator(mode="after")
    def _shape(self) -> ApprovalRule:
        if not (self.scopes or self.flags):
            raise ValueError("an approval rule needs scopes or flags")
        return self

    def covers(self, layer: Layer) -> bool:
        """Whether a write to `layer` can change what a scope this rule names resolves to.

        A rule protects its scopes from every layer they resolve from: ``defaults`` reaches every
        scope, so any rule with scopes covers it; ``env/E`` reaches every service of E, so a rule
        naming E or any E/<service> covers it; ``service/E/S`` is covered by a rule naming it.
        """
        if layer.kind is LayerKind.FLAGS:
            return any(fnmatch.fnmatchcase(layer.environment, p) for p in self.flags)
        if layer.kind is LayerKind.DEFAULTS:
            return bool(self.scopes)
        if layer.kind is LayerKind.ENVIRONMENT:
            return any(fnmatch.fnmatchcase(layer.environment, p.partition("/")[0]) for p in self.scopes)
        return any(fnmatch.fnmatchcase(scope_path(layer), p) for p in self.scopes)

    def describe(self) -> str:
        return self.name or ",".join((*self.scopes, *(f"flags:{f}" for f in self.flags)))


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identities: dict[str, Grant] = Field(default_factory=dict)
    approvals: list[ApprovalRule] = Field(default_factory=list, max_length=100)


def load_policy(path: str) -> dict[str, Grant]:
    """Read and validate a policy file's identities (see `load_policy_file`)."""
    return load_policy_file(path).identities


def load_policy_file(path: str) -> PolicyFile:
    """Read and validate a policy file; every problem is an InvalidArgument naming its place."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise errors.InvalidArgument(f"policy {path}: {exc}") from exc
    try:
        return PolicyFile.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise errors.InvalidArgument(f"policy {path}: {where}: {first['msg']}") from exc


# -- tokens --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    grant: Grant
    sha256: str
    created_at: float
    created_by: str

    def encode(self) -> bytes:
        return json.dumps({
            "name": self.name, "grant": self.grant.model_dump(mode="json"), "sha256": self.sha256,
            "created_at": self.created_at, "created_by": self.created_by,
        }).encode()  # fmt: skip

    @classmethod
    def decode(cls, token_id: str, raw: bytes) -> TokenRecord:
        doc = loads_json(raw)
        return cls(token_id, doc["name"], Grant.model_validate(doc["grant"]), doc["sha256"],
                   float(doc["created_at"]), doc.get("created_by", ""))  # fmt: skip


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(name: str, grant: Grant, created_by: str) -> tuple[TokenRecord, str]:
    """A fresh token: its record (to store) and the bearer string (shown once, never stored)."""
    check_name(name, "token name")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    record = TokenRecord(token_id, name, grant, hash_secret(secret), time.time(), created_by)
    return record, f"{TOKEN_PREFIX}{token_id}.{secret}"


def parse_bearer(value: str) -> tuple[str, str] | None:
    """(id, secret) of ``Bearer cmt_<id>.<secret>``, or None."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    token_id, dot, secret = token[len(TOKEN_PREFIX) :].partition(".")
    return (token_id, secret) if dot and token_id and secret else None


# -- the checker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    identity: str
    grant: Grant | None
    # Set for token callers, so a revocation can be noticed on open streams.
    token_id: str = ""

    @property
    def authenticated(self) -> bool:
        return self.identity != "anonymous"

    def describe(self) -> str:
        return f"{self.identity} ({self.grant.describe() if self.grant else 'no grant'})"


ANONYMOUS = Caller("anonymous", None)


class Access:
    """Identifies callers and enforces the policy (when there is one)."""

    def __init__(
        self,
        tokens: Callable[[], dict[str, TokenRecord]],
        policy_path: str = "",
        *,
        reload_interval: float = 2.0,
        on_reload: Sequence[Callable[[], None]] = (),
        record_denial: Callable[[str, str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.tokens = tokens
        self.policy_path = policy_path
        self.enforcing = bool(policy_path)
        self.reload_interval = reload_interval
        policy = load_policy_file(policy_path) if policy_path else PolicyFile()
        self.policy: dict[str, Grant] = policy.identities
        self.approvals: list[ApprovalRule] = policy.approvals
        self._mtime = self._policy_mtime()
        self.on_reload = list(on_reload)
        self.reload_error = ""
        # Writes a denial to the audit log: (identity, method, message).
        self.record_denial = record_denial
        self._denials: dict[tuple[str, str], float] = {}
        self._denial_log = Throttled(log)

    def _policy_mtime(self) -> float:
        try:
            return Path(self.policy_path).stat().st_mtime if self.policy_path else 0.0
        except OSError:
            return 0.0

    def maybe_reload(self) -> bool:
        """Reload the policy file if it changed; a broken file keeps the last good policy."""
        mtime = self._policy_mtime()
        if not self.policy_path or mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            policy = load_policy_file(self.policy_path)
            self.policy, self.approvals = policy.identities, policy.approvals
        except errors.InvalidArgument as exc:
            self.reload_error = exc.message
            log.error("keeping the previous policy: %s", exc.message)
            return False
        self.reload_error = ""
        log.info("policy reloaded from %s (%d identities)", self.policy_path, len(self.policy))
        for callback in self.on_reload:
            callback()
        return True

    def identify_bearer(self, bearer: str) -> Caller:
        """The caller an ``Authorization: Bearer cmt_…`` value proves; Unauthenticated if none."""
        parsed = parse_bearer(bearer)
        record = self.tokens().get(parsed[0]) if parsed else None
        if parsed is None or record is None or not hmac.compare_digest(record.sha256, hash_secret(parsed[1])):
            raise errors.Unauthenticated("invalid or revoked bearer token", code="bad_token")
        return Caller(f"token:{record.name}", record.grant, record.id)

    def grant_of(self, identity: str) -> Grant | None:
        """The grant `identity` holds now (``token:<name>`` or a policy identity); None when it holds none
        (a revoked token, an identity the policy no longer lists)."""
        if identity.startswith("token:"):
            name = identity.removeprefix("token:")
            return next((r.grant for r in self.tokens().values() if r.name == name), None)
        return self.policy.get(identity)

    def identify(self, context: Any) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        bearer = metadata.get("authorization")
        if isinstance(bearer, str) and bearer:
            return self.identify_bearer(bearer)
        names = peer_identities(context)
        for name in names:
            if name in self.policy:
                return Caller(name, self.policy[name])
        return Caller(names[0], None) if names else ANONYMOUS

    def still_valid(self, caller: Caller) -> Caller | None:
        """`caller` with its current grant (after a reload or a revocation), or None if it has none."""
        if caller.token_id:
            record = self.tokens().get(caller.token_id)
            return Caller(caller.identity, record.grant, caller.token_id) if record else None
        grant = self.policy.get(caller.identity)
        return Caller(caller.identity, grant) if grant else None

    def require(self, caller: Caller, allowed: Callable[[Grant], bool], what: str) -> None:
        """Raise unless `caller`'s grant allows `what` (nothing is enforced without a policy)."""
        if not self.enforcing:
            return
        if not caller.authenticated:
            raise errors.Unauthenticated(
                f"this server requires a client certificate or a bearer token to {what}", code="no_identity"
            )
        if caller.grant is None or not allowed(caller.grant):
            raise errors.PermissionDenied(f"{caller.describe()} may not {what}", code="denied")

    async def audit_denial(self, exc: errors.ConfmeshError, context: Any, method: str) -> None:
        """Log a PERMISSION_DENIED and record it in the audit log.

        At most one record per identity and method every `DENIAL_AUDIT_INTERVAL`
        seconds, so a misbehaving caller cannot flood etcd.
        """
        if not isinstance(exc, errors.PermissionDenied):
            return
        try:
            caller = self.identify(context)
        except errors.ConfmeshError:
            return
        await self.audit_caller_denial(exc, caller, method)

    async def audit_caller_denial(self, exc: errors.ConfmeshError, caller: Caller, method: str) -> None:
        """`audit_denial` for a caller already identified (e.g. over HTTP)."""
        if not isinstance(exc, errors.PermissionDenied):
            return
        self._denial_log.log(logging.WARNING, (caller.identity, method), "denied %s to %s: %s",
                             method, caller.identity, exc.message)  # fmt: skip
        key, now = (caller.identity, method), time.monotonic()
        if (
            self.record_denial is None
            or now - self._denials.get(key, -DENIAL_AUDIT_INTERVAL) < DENIAL_AUDIT_INTERVAL
        ):
            return
        if len(self._denials) > 10_000:
            self._denials.clear()
        self._denials[key] = now
        try:
            await self.record_denial(caller.identity, method, exc.message)
        except errors.ConfmeshError as failure:
            log.warning("could not audit a denial: %s", failure.message)

    def require_writes(self, caller: Caller, layers: Sequence[Layer]) -> None:
        for layer in sorted(set(layers)):
            self.require(caller, lambda g, layer=layer: g.can_write(layer), f"write {layer}")  # type: ignore[misc]

    def approvals_needed(self, layers: Sequence[Layer]) -> tuple[int, list[ApprovalRule]]:
        """How many approvals a change to `layers` needs (the most any matching rule asks), and
        the rules that match."""
        rules = [rule for rule in self.approvals if any(rule.covers(layer) for layer in layers)]
        return max((rule.approvers for rule in rules), default=0), rules

    def require_no_approval(self, layers: Sequence[Layer], bypass: Bypass | None = None) -> None:
        """Refuse a direct write to layers an approval rule covers (unless each allows `bypass`)."""
        for layer in sorted(set(layers)):
            rules = [rule for rule in self.approvals if rule.covers(layer)]
            blocking = [rule for rule in rules if bypass is None or bypass not in rule.allow]
            if blocking:
                rule = blocking[0]
                raise errors.FailedPrecondition(
                    f"{layer} needs {rule.approvers} approval(s) (rule {rule.describe()!r}): propose the "
                    "change instead (confmesh change propose)",
                    code="approval_required",
                    field=str(layer),
                )

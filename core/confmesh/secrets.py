"""Secret references: config holds where a secret is, never the secret.

A value ``{"$secret": "env:DB_PASSWORD"}``, ``{"$secret": "file:/run/secrets/db"}``
or ``{"$secret": "vault:secret/orders#db_password"}`` (a field of a Vault KV v2
secret: mount, path, field; needs ``confmesh[vault]`` and the usual
``VAULT_ADDR``/``VAULT_TOKEN`` in the client's environment) is stored and
distributed as is; the client SDK replaces it with the secret
when it applies a snapshot, so etcd, the server, its logs and the audit trail
only ever see the reference. The syntax is checked when the value is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confmesh.errors import FieldIssue, InvalidArgument

REF_KEY = "$secret"
REF_RE = re.compile(
    r"^(env:[A-Za-z_][A-Za-z0-9_]{0,255}"
    r"|file:/[^\x00]{1,4095}"
    r"|vault:[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_./-]{1,1024}#[A-Za-z0-9_.-]{1,256})$"
)


def check_refs(value: Any, path: str) -> None:
    """Refuse malformed references (write time)."""
    if isinstance(value, Mapping):
        if REF_KEY in value:
            ref = value[REF_KEY]
            if len(value) != 1 or not isinstance(ref, str) or not REF_RE.match(ref):
                raise InvalidArgument(
                    f'{path}: a secret reference is exactly {{"$secret": "env:NAME"}}, '
                    f'{{"$secret": "file:/absolute/path"}} or {{"$secret": "vault:mount/path#field"}}, '
                    f"got {dict(value)!r}",
                    code="invalid_secret_ref",
                    field=path,
                )
            return
        for k, v in value.items():
            check_refs(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_refs(v, f"{path}[{i}]")


def _vault(target: str) -> str:
    try:
        import hvac  # type: ignore[import-untyped]
    except ImportError as exc:
        raise LookupError("vault: references need the hvac package: pip install 'confmesh[vault]'") from exc
    location, _, field = target.rpartition("#")
    mount, _, path = location.partition("/")
    client = hvac.Client(timeout=10)
    try:
        secret = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        )
    except Exception as exc:  # hvac raises many types (HTTP, auth, connection); all mean "not readable"
        raise LookupError(f"secret vault:{target} cannot be read: {type(exc).__name__}: {exc}") from exc
    data = secret.get("data", {}).get("data", {})
    if field not in data:
        raise LookupError(f"secret vault:{target}: the secret has no field {field!r}")
    return str(data[field])


def _resolve_one(ref: str) -> str:
    scheme, _, target = ref.partition(":")
    if scheme == "vault":
        return _vault(target)
    if scheme == "env":
        if target not in os.environ:
            raise LookupError(f"secret {ref} is not set in this process's environment")
        return os.environ[target]
    try:
        return Path(target).read_text().rstrip("\n")
    except OSError as exc:
        raise LookupError(f"secret {ref} cannot be read: {exc.strerror}") from exc


def resolve_changed(
    config: Mapping[str, Any], previous: Mapping[str, Any] | None, changed: frozenset[str] | None
) -> tuple[dict[str, Any], list[FieldIssue]]:
    """`resolve_refs` of a config whose top-level keys other than `changed` are those `previous`
    was resolved from: only the changed keys are walked (and their references read) again.

    `previous` or `changed` None: the whole config is walked.
    """
    if previous is None or changed is None:
        whole, found = resolve_refs(config)
        return whole, found
    out: dict[str, Any] = {}
    issues: list[FieldIssue] = []
    for key, value in config.items():
        if key in changed or key not in previous:
            out[key], found = resolve_refs(value, key)
            issues += found
        else:
            out[key] = previous[key]
    return out, issues


def resolve_refs(value: Any, path: str = "") -> tuple[Any, list[FieldIssue]]:
    """A copy of `value` with every reference replaced by its secret, and the failures."""
    issues: list[FieldIssue] = []

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, Mapping):
            if REF_KEY in node and isinstance(node[REF_KEY], str):
                try:
                    return _resolve_one(node[REF_KEY])
                except LookupError as exc:
                    issues.append(FieldIssue(where, str(exc)))
                    return None
            return {k: walk(v, f"{where}.{k}" if where else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(value, path), issues

"""The client's last-good snapshot on disk, so a restart survives a dead server.

One JSON file, written atomically (temporary file, fsync, rename) after each
applied snapshot: ``{"format": 1, "environment", "service", "version", "hash",
"config", "flags", "saved_at", "checksum"}`` where ``checksum`` is the
sha256 of the canonical JSON of everything else. A file that fails its
checksum or its snapshot hash, or belongs to another scope, is ignored with a
warning; one older than the allowed age refuses the start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confmesh.digest import matches
from confmesh.errors import StartupError
from confmesh.keys import Scope
from confmesh.merge import canonical_json

log = logging.getLogger("confmesh.client")

FORMAT = 1


@dataclass(frozen=True)
class CachedSnapshot:
    version: int
    hash: str
    config: dict[str, Any]
    flags: dict[str, Any]
    saved_at: float


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def save(path: Path, scope: Scope, snap: CachedSnapshot) -> None:
    body = {
        "format": FORMAT,
        "environment": scope.environment,
        "service": scope.service,
        "version": snap.version,
        "hash": snap.hash,
        "config": snap.config,
        "flags": snap.flags,
        "saved_at": snap.saved_at,
    }
    data = json.dumps({**body, "checksum": _checksum(body)}, ensure_ascii=False).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, scope: Scope, max_age: float | None) -> CachedSnapshot | None:
    """The cached snapshot, None when there is no usable file, StartupError when too old."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable config cache %s: %s", path, exc)
        return None
    if not isinstance(raw, dict):
        log.warning("ignoring config cache %s: not a JSON object", path)
        return None
    checksum = raw.pop("checksum", None)
    if raw.get("format") != FORMAT or checksum != _checksum(raw):
        log.warning("ignoring config cache %s: checksum mismatch or unknown format", path)
        return None
    if (raw.get("environment"), raw.get("service")) != (scope.environment, scope.service):
        log.warning(
            "ignoring config cache %s: it belongs to %s/%s", path, raw.get("environment"), raw.get("service")
        )
        return None
    if not matches(str(raw["hash"]), raw["config"], raw["flags"]):
        log.warning("ignoring config cache %s: content does not match its hash", path)
        return None
    age = time.time() - float(raw["saved_at"])
    if max_age is not None and age > max_age:
        raise StartupError(
            f"config cache {path} is {age:.0f}s old, beyond max_cache_age={max_age:.0f}s, and no server "
            "answered; refusing to start on config that old"
        )
    return CachedSnapshot(
        int(raw["version"]), str(raw["hash"]), raw["config"], raw["flags"], float(raw["saved_at"])
    )

"""Unleash's client features API response, read into confmesh flags (see below)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confmesh.flags.formats import FlagsDocument


def is_unleash(document: Any) -> bool:
    return isinstance(document, Mapping) and isinstance(document.get("features"), list)


def read_unleash(document: Any, *, source: str = "flags") -> FlagsDocument:
    from confmesh.errors import InvalidArgument

    raise InvalidArgument(f"{source}: reading Unleash files is not built yet")

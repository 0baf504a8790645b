"""Flag files: confmesh's own format or the classic JSON, from disk (offline mode).

confmesh's format is ``{"flags": {"<key>": {<flag>}, ...}}``; a bare mapping of
flag definitions is accepted too. JSON or YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from confmesh.errors import InvalidArgument
from confmesh.flags.classic import import_classic, is_classic
from confmesh.flags.model import Flag, FlagSet, parse_flag_set


def flags_from_document(document: Any, *, source: str = "flags") -> FlagSet:
    if not isinstance(document, Mapping):
        raise InvalidArgument(f"{source}: expected an object of flags")
    if is_classic(document):
        flags: dict[str, Flag] = import_classic(document)
        return FlagSet(flags=flags)
    body = document.get("flags", document) if "flags" in document else document
    if not isinstance(body, Mapping):
        raise InvalidArgument(f"{source}: 'flags' must be an object")
    return parse_flag_set(
        {k: ({"key": k, **v} if isinstance(v, Mapping) and "key" not in v else v) for k, v in body.items()}
    )


def load_flags_file(path: str | Path) -> FlagSet:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read flags file {path}: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{path}: not valid JSON/YAML: {exc}") from exc
    return flags_from_document(document, source=str(path))

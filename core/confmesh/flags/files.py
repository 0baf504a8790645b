"""Flag files from disk or a document: confmesh's format, classic JSON, flagd or Unleash.

confmesh's format is ``{"flags": {"<key>": {<flag>}, ...}}``; a bare mapping of
flag definitions is accepted too. JSON or YAML. ``detect_format`` tells the
four apart: flagd by its ``$schema``, ``$evaluators`` or flags with a
``state``; Unleash by its ``features`` list (the client features API response);
classic by its entries' classic ``type`` (and no confmesh ``variants``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from confmesh.errors import InvalidArgument
from confmesh.flags.classic import import_classic, is_classic
from confmesh.flags.flagd import is_flagd, read_flagd
from confmesh.flags.formats import FORMATS, FlagsDocument, FormatProblem, validate_flag
from confmesh.flags.model import Flag, FlagSet, keyed
from confmesh.flags.unleash import is_unleash, read_unleash
from confmesh.textfiles import read_text


def detect_format(document: Any) -> str:
    if isinstance(document, Mapping):
        if is_unleash(document):
            return "unleash"
        if is_flagd(document):
            return "flagd"
        if is_classic(document):
            return "classic"
    return "confmesh"


def read_document(
    document: Any, *, source: str = "flags", format: str | None = None, fractional: str = "v2"
) -> FlagsDocument:
    """The flags of a document in any format (problems collected for flagd and Unleash)."""
    format = format or detect_format(document)
    if format not in FORMATS:
        raise InvalidArgument(f"unknown flags format {format!r} (one of {', '.join(FORMATS)})")
    if format == "flagd":
        return read_flagd(document, source=source, fractional=fractional)
    if format == "unleash":
        return read_unleash(document, source=source)
    return FlagsDocument(flags=dict(flags_from_document(document, source=source, format=format).flags))


def flags_from_document(
    document: Any, *, source: str = "flags", format: str | None = None, fractional: str = "v2"
) -> FlagSet:
    """The flags of a document as a validated set; InvalidArgument lists what is wrong."""
    if not isinstance(document, Mapping):
        raise InvalidArgument(f"{source}: expected an object of flags")
    format = format or detect_format(document)
    if format in ("flagd", "unleash"):
        return read_document(document, source=source, format=format, fractional=fractional).flag_set()
    if format == "classic":
        if not is_classic(document):
            raise InvalidArgument(f"{source}: not a classic flags file (every entry needs a classic type)")
        flags: dict[str, Flag] = import_classic(document, source=source)
        return FlagSet(flags=flags)
    body = document.get("flags", document) if "flags" in document else document
    if not isinstance(body, Mapping):
        raise InvalidArgument(f"{source}: 'flags' must be an object")
    doc = FlagsDocument()  # every flag checked on its own, every problem listed, then the set
    for key, definition in body.items():
        if not isinstance(definition, Mapping):
            doc.problems.append(FormatProblem(source, str(key), "", "expected an object"))
            continue
        validate_flag(keyed(key, dict(definition)), source, str(key), doc)
    return doc.flag_set()


def parse_document(text: str, source: str) -> Any:
    """JSON (read as JSON: YAML would split a non-BMP escape into two surrogates), else YAML."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source}: not valid JSON/YAML: {exc}") from exc


def load_document(path: str | Path) -> Any:
    return parse_document(read_text(path), str(path))


def load_flags_file(path: str | Path, *, format: str | None = None, fractional: str = "v2") -> FlagSet:
    return flags_from_document(load_document(path), source=str(path), format=format, fractional=fractional)

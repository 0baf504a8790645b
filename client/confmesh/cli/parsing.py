"""What the CLI parses from the command line, in one place: server targets, values, assignments."""

from __future__ import annotations

import json
from typing import Any

from confmesh.errors import InvalidArgument
from confmesh.merge import JSONValue

DEFAULT_PORT = 7070
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


def server_target(text: str) -> str:
    """``HOST[:PORT]`` or ``[IPv6][:PORT]``, with the port defaulting to 7070 (never gRPC's 443).

    Targets with a gRPC scheme (``dns:///``, ``unix:``, ``ipv4:``...) are passed on as written.
    """
    text = text.strip()
    if "://" in text or text.startswith(("unix:", "unix-abstract:", "ipv4:", "ipv6:", "dns:")):
        return text
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise InvalidArgument(f"--server {text!r}: use HOST:PORT or [IPv6]:PORT")
        port = rest[1:] if rest else str(DEFAULT_PORT)
        host = f"[{host}]"
    elif text.count(":") > 1:
        raise InvalidArgument(f"--server {text!r}: write an IPv6 address in brackets, [::1]:7070")
    else:
        host, _, port = text.partition(":")
        port = port if ":" in text else str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"--server {text!r}: use HOST:PORT (the port defaults to {DEFAULT_PORT})")
    return f"{host}:{int(port)}"


def parse_cli_value(raw: str, *, as_string: bool) -> JSONValue:
    """VALUE is JSON (`10`, `true`, `{"a": 1}`, `"text"`); other text is a string.

    Text that looks like JSON (starts with { [ or ") but does not parse is
    refused rather than silently stored as a string.
    """
    if as_string:
        return raw
    try:
        value: JSONValue = json.loads(raw)
        return value
    except ValueError as exc:
        if raw.lstrip()[:1] in ("{", "[", '"'):
            raise InvalidArgument(f"VALUE looks like JSON but does not parse: {exc}") from exc
        return raw


def parse_assignments(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options (VALUE as ``parse_cli_value`` reads it)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = parse_cli_value(raw, as_string=False)
    return out

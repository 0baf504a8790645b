"""Flag decisions on the wire: the W3C baggage members that carry them.

One baggage member per decided flag, plus one naming the flag set::

    baggage: cmf.f.newCheckout=42%21on%21true,cmf.set=production

A flag member's value, percent-decoded, is
``<snapshot version>!<variant>!<JSON value>``; the variant is itself
percent-encoded (so it may hold ``!``) and empty when the flag served none.
Flags whose JSON value is longer than `MAX_VALUE_BYTES` are not propagated,
nor are members past `MAX_TOTAL_BYTES` or `MAX_FLAGS`; the downstream then
evaluates those flags itself. W3C caps a whole baggage header at 8,192 bytes.

Encoding works on header text directly (no OpenTelemetry objects) because it
runs on every call: a request's header is built once per combination of
pre-built ``EvaluationDetails`` and cached (``flags.scope``), and an upstream
member is forwarded as it arrived.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

from confmesh.flags.details import EvaluationDetails, Reason

SET_MEMBER = "cmf.set"
FLAG_PREFIX = "cmf.f."
MAX_VALUE_BYTES = 256
MAX_TOTAL_BYTES = 2048
MAX_FLAGS = 64


@dataclass(frozen=True, slots=True, eq=False)
class Decision:
    """A flag's value as decided upstream for one request."""

    key: str
    value: Any
    variant: str | None
    version: int
    # The member as it travels ("cmf.f.<key>=<encoded>").
    member: str = ""

    # What an evaluation of the flag returns downstream (built once; decisions are cached).
    details: EvaluationDetails = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.member:
            encoded = encode_member(self.key, self.value, self.variant, self.version)
            object.__setattr__(self, "member", encoded or "")
        details = EvaluationDetails(self.key, self.value, self.variant, Reason.PROPAGATED, rule="upstream",
                                    flag_version=self.version)  # fmt: skip
        object.__setattr__(self, "details", details)

    def fields(self) -> tuple[str, Any, str | None, int]:
        return self.key, self.value, self.variant, self.version


def is_decision_member(name: str) -> bool:
    return name == SET_MEMBER or name.startswith(FLAG_PREFIX)


def encode_member(key: str, value: Any, variant: str | None, version: int) -> str | None:
    """The wire member for one decision, or None when it is too large or not JSON."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    if len(text.encode()) > MAX_VALUE_BYTES:
        return None
    raw = f"{version}!{quote(variant or '', safe='')}!{text}"
    return f"{FLAG_PREFIX}{quote(key, safe='')}={quote(raw, safe='')}"


def build_header(members: Iterable[str | None], flag_set: str) -> str:
    """A baggage header fragment of `members` within the bounds ("" when none)."""
    kept: list[str] = []
    total = len(SET_MEMBER) + 1 + len(flag_set)
    for member in members:
        if not member:
            continue
        if len(kept) >= MAX_FLAGS:
            break
        if total + len(member) + 1 > MAX_TOTAL_BYTES:
            continue
        total += len(member) + 1
        kept.append(member)
    if not kept:
        return ""
    kept.append(f"{SET_MEMBER}={quote(flag_set, safe='')}")
    return ",".join(kept)


@functools.lru_cache(maxsize=8192)
def _decode_member(member: str) -> Decision | None:
    """One ``cmf.f.`` member; cached, as the same decisions recur request after request."""
    name, _, value = member.partition("=")
    key = unquote(name.strip()[len(FLAG_PREFIX) :])
    raw = unquote_plus(value.split(";", 1)[0].strip())
    parts = raw.split("!", 2)
    if len(parts) != 3 or not key or len(parts[2].encode()) > MAX_VALUE_BYTES:
        return None
    try:
        version = int(parts[0])
        decoded = json.loads(parts[2])
    except ValueError:
        return None
    return Decision(key, decoded, unquote(parts[1]) or None, version, member)


def split_header(header: str, *, decode: bool = True) -> tuple[str, str, Mapping[str, Decision]]:
    """(the other members, flag set, decisions) of a baggage header; malformed members are dropped.

    With ``decode=False`` decision members are only removed (untrusted input is
    not parsed, nor cached). Decoded headers are cached whole: between two
    services the same few headers recur.
    """
    if decode:
        return _split_decoded(header)
    return _split(header, decode=False)


@functools.lru_cache(maxsize=4096)
def _split_decoded(header: str) -> tuple[str, str, Mapping[str, Decision]]:
    others, flag_set, decisions = _split(header, decode=True)
    return others, flag_set, MappingProxyType(decisions)


def _split(header: str, *, decode: bool) -> tuple[str, str, dict[str, Decision]]:
    others: list[str] = []
    flag_set = ""
    decisions: dict[str, Decision] = {}
    for member in header.split(","):
        name, sep, value = member.partition("=")
        name = name.strip()
        if not name.startswith("cmf."):
            if member.strip():
                others.append(member.strip())
            continue
        if not sep or not decode:
            continue
        if name == SET_MEMBER:
            flag_set = unquote_plus(value.split(";", 1)[0].strip())
        elif name.startswith(FLAG_PREFIX) and len(decisions) < MAX_FLAGS:
            decision = _decode_member(member.strip())
            if decision is not None:
                decisions[decision.key] = decision
    return ",".join(others), flag_set, decisions

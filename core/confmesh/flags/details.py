"""What an evaluation returns: value, variant, reason (OpenFeature's vocabulary)."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class Metadata(Mapping[str, Any]):
    """A flag's metadata, read-only and shared by every outcome of the flag."""

    __slots__ = ("_items",)
    __hash__ = object.__hash__

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Metadata({self._items!r})"


NO_METADATA = Metadata()


class Reason(enum.StrEnum):
    """OpenFeature resolution reasons, plus PREREQUISITE_FAILED and PROPAGATED."""

    STATIC = "STATIC"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DISABLED = "DISABLED"
    DEFAULT = "DEFAULT"
    PREREQUISITE_FAILED = "PREREQUISITE_FAILED"
    PROPAGATED = "PROPAGATED"
    ERROR = "ERROR"


class ErrorCode(enum.StrEnum):
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    PARSE_ERROR = "PARSE_ERROR"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True, eq=False)
class EvaluationDetails:
    flag_key: str
    value: Any
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    # The rule that decided ("" when none): a rule id, "target", "prerequisite:<flag>".
    rule: str = ""
    flag_version: int = 0
    # The flag's metadata (OpenFeature flag metadata: str, int, float or bool values).
    metadata: Mapping[str, Any] = NO_METADATA
    # Where usage counting tallies this outcome (UsageCounter); 0 is the uncounted slot.
    usage_slot: int = field(default=0, repr=False)

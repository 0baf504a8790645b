"""What an evaluation returns: value, variant, reason (OpenFeature's vocabulary)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


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

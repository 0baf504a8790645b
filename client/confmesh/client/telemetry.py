"""OpenTelemetry for the client SDK: flag evaluation events and change-trace spans.

Attribute names follow the OpenTelemetry semantic conventions for feature
flags, version 1.44.0 (``opentelemetry-semantic-conventions`` 0.66b2);
``tests/test_telemetry.py`` checks them against that package.

``instrument_flags()`` adds a ``feature_flag.evaluation`` event to the
current span on every flag evaluation in the process. Flag values and
context ids are personal data in many systems, so they are recorded only
when asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import metrics, trace

from confmesh.flags import EvaluationDetails, FlagEvaluator, Reason
from confmesh.flags.hooks import HOOKS

PROVIDER_NAME = "confmesh"
EVENT_NAME = "feature_flag.evaluation"

FEATURE_FLAG_KEY = "feature_flag.key"
FEATURE_FLAG_RESULT_VARIANT = "feature_flag.result.variant"
FEATURE_FLAG_RESULT_VALUE = "feature_flag.result.value"
FEATURE_FLAG_RESULT_REASON = "feature_flag.result.reason"
FEATURE_FLAG_PROVIDER_NAME = "feature_flag.provider.name"
FEATURE_FLAG_SET_ID = "feature_flag.set.id"
FEATURE_FLAG_VERSION = "feature_flag.version"
FEATURE_FLAG_CONTEXT_ID = "feature_flag.context.id"
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "error.message"
# confmesh's own: how many versions the local flag snapshot is ahead (+) or behind (-)
# the upstream snapshot a PROPAGATED decision was made with.
VERSION_SKEW = "confmesh.flag.version_skew"


def semconv_reason(reason: Reason) -> str:
    """The conventions' lowercase snake_case; confmesh's extra reasons keep their names."""
    return reason.value.lower()


class FlagSpanEvents:
    """An evaluation observer that adds one span event per evaluation."""

    def __init__(self, *, include_value: bool = False, include_context_id: bool = False) -> None:
        self.include_value = include_value
        self.include_context_id = include_context_id
        self.skew = metrics.get_meter("confmesh.client").create_counter(
            "confmesh.flag.version_skew",
            description="Propagated flag decisions made with another snapshot version than the local one",
        )

    def __call__(
        self, evaluator: FlagEvaluator, details: EvaluationDetails, context: Mapping[str, Any] | None
    ) -> None:
        skew = 0
        if details.reason is Reason.PROPAGATED:
            local = evaluator.flag_version(details.flag_key)
            skew = local - details.flag_version if details.flag_version != local else 0
        if skew:
            self.skew.add(1, {FEATURE_FLAG_KEY: details.flag_key, FEATURE_FLAG_SET_ID: evaluator.environment})
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attrs: dict[str, Any] = {
            FEATURE_FLAG_KEY: details.flag_key,
            FEATURE_FLAG_RESULT_REASON: semconv_reason(details.reason),
            FEATURE_FLAG_PROVIDER_NAME: PROVIDER_NAME,
            FEATURE_FLAG_SET_ID: evaluator.environment,
            FEATURE_FLAG_VERSION: str(details.flag_version),
        }
        if details.variant is not None:
            attrs[FEATURE_FLAG_RESULT_VARIANT] = details.variant
        if details.error_code is not None:
            attrs[ERROR_TYPE] = details.error_code.value.lower()
            if details.error_message:
                attrs[ERROR_MESSAGE] = details.error_message
        if skew:
            attrs[VERSION_SKEW] = skew
        if self.include_value:
            value = details.value
            attrs[FEATURE_FLAG_RESULT_VALUE] = (
                value if isinstance(value, bool | int | float | str) else json.dumps(value, default=str)
            )
        if self.include_context_id and context:
            context_id = context.get("targetingKey")
            if isinstance(context_id, str):
                attrs[FEATURE_FLAG_CONTEXT_ID] = context_id
        span.add_event(EVENT_NAME, attrs)


_installed: tuple[FlagSpanEvents, Callable[[], None]] | None = None


def instrument_flags(*, include_value: bool = False, include_context_id: bool = False) -> Callable[[], None]:
    """Record every flag evaluation in this process on the current span; returns an uninstaller.

    Calling it again replaces the settings.
    """
    global _installed
    uninstrument_flags()
    observer = FlagSpanEvents(include_value=include_value, include_context_id=include_context_id)
    _installed = (observer, HOOKS.add_observer(observer))
    return uninstrument_flags


def uninstrument_flags() -> None:
    global _installed
    if _installed is not None:
        _installed[1]()
        _installed = None


__all__ = [
    "FlagSpanEvents",
    "instrument_flags",
    "semconv_reason",
    "uninstrument_flags",
]

"""Change traces: an admin write's span context, stored with the change, joined by every step after.

The write's W3C traceparent is stored in the change's audit record (same etcd
transaction), travels in each snapshot built from it, and every replica's
publish and every client's apply or rejection emits a span in that trace,
linked to the write's span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_TRACE_CONTEXT = TraceContextTextMapPropagator()


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when there is none)."""
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier)
    return carrier.get("traceparent", "")


def change_span(
    tracer_provider: TracerProvider | None,
    traceparent: str,
    name: str,
    attributes: Mapping[str, Any],
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    error: str = "",
) -> None:
    """Emit one finished span for a step of a change (apply, reject, publish).

    The span joins the trace of the admin write that made the change (its
    `traceparent`) and links to the write's span as well.
    """
    parent = _TRACE_CONTEXT.extract({"traceparent": traceparent})
    write = trace.get_current_span(parent).get_span_context()
    if not write.is_valid:
        return
    tracer = trace.get_tracer("confmesh", tracer_provider=tracer_provider)
    span = tracer.start_span(
        name, context=parent, kind=kind, attributes=dict(attributes), links=[Link(write)]
    )
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()

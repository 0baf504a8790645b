"""Flag decisions across service hops, in W3C baggage (see confmesh.flags.decisions).

* Incoming: the gRPC server interceptors and the ASGI/WSGI middleware split
  a request's ``baggage`` header into flag decisions and everything else,
  and open a request scope holding the decisions if the caller is trusted
  (``Trust``). Decisions from an untrusted caller are dropped, from the
  scope and from the baggage that travels on, so a caller at the edge cannot
  forge one by sending a header.
* Outgoing: the gRPC client interceptors add the request's decisions to the
  baggage they inject. For HTTP, ``ConfmeshBaggagePropagator``
  (``OTEL_PROPAGATORS=tracecontext,confmesh_baggage``) makes every
  OpenTelemetry-instrumented HTTP client carry them, and ``inject_headers()``
  serves clients that are not instrumented.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from confmesh.flags import decisions as codec
from confmesh.flags.scope import FlagScope, current_scope, request_scope
from confmesh.identity import peer_identities

_W3C_BAGGAGE = W3CBaggagePropagator()
EMPTY: Mapping[str, codec.Decision] = MappingProxyType({})


class Trust:
    """Whose flag decisions a service honours.

    ``Trust(["spiffe://prod/orders"])`` trusts callers whose verified client
    certificate carries one of these names; ``Trust.internal()`` suits a
    listener that only other services can reach; ``Trust.nobody()`` (the
    default) is for the edge.
    """

    __slots__ = ("everyone", "identities")

    def __init__(self, identities: Iterable[str] = (), *, everyone: bool = False) -> None:
        self.identities = frozenset(identities)
        self.everyone = everyone

    @classmethod
    def nobody(cls) -> Trust:
        return cls()

    @classmethod
    def internal(cls) -> Trust:
        return cls(everyone=True)

    @property
    def needs_caller(self) -> bool:
        """Whether only the caller's verified identity can decide."""
        return not self.everyone and bool(self.identities)

    def allows(self, identities: Sequence[str]) -> bool:
        return self.everyone or any(i in self.identities for i in identities)

    def allows_caller(self, context: Any) -> bool:
        """Given a ``grpc``/``grpc.aio`` servicer context: is the caller trusted?"""
        return self.everyone or (bool(self.identities) and self.allows(peer_identities(context)))


def strip_decisions(ctx: Context | None = None) -> Context:
    """`ctx` (default: the current context) without flag-decision baggage members."""
    ctx = ctx if ctx is not None else otel_context.get_current()
    for name in list(baggage.get_all(ctx)):
        if codec.is_decision_member(name):
            ctx = baggage.remove_baggage(name, ctx)
    return ctx


def with_decisions(baggage_header: str) -> str:
    """`baggage_header` plus the current request's decisions (any decision members in it are replaced)."""
    if "cmf." in baggage_header:
        baggage_header = codec.split_header(baggage_header, decode=False)[0]
    scope = current_scope()
    ours = scope.baggage() if scope is not None else ""
    if not ours:
        return baggage_header
    return f"{baggage_header},{ours}" if baggage_header else ours


@contextmanager
def incoming_scope(
    baggage_header: str, trusted: bool, *, propagate: Collection[str] | None = None
) -> Iterator[FlagScope]:
    """A request scope with the decisions in `baggage_header` if `trusted` (for HTTP middleware).

    Decision members that other instrumentation already extracted into the
    current context are removed while the scope is open.
    """
    flag_set, upstream = "", EMPTY
    if trusted and "cmf." in baggage_header:
        _, flag_set, upstream = codec.split_header(baggage_header)
    token = otel_context.attach(strip_decisions())
    try:
        with request_scope(upstream, flag_set=flag_set, propagate=propagate) as scope:
            yield scope
    finally:
        otel_context.detach(token)


def inject_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add trace context and baggage, the request's flag decisions included, to outgoing headers."""
    propagate.inject(headers)
    merged = with_decisions(headers.get("baggage", ""))
    if merged:
        headers["baggage"] = merged
    return headers


class ConfmeshBaggagePropagator(TextMapPropagator):
    """W3C baggage whose flag-decision members come from the current request scope.

    Use it instead of ``baggage`` in ``OTEL_PROPAGATORS`` (its entry-point name
    is ``confmesh_baggage``) or in a ``CompositePropagator``.
    """

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        return _W3C_BAGGAGE.extract(carrier, context=context, getter=getter)

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        plain: dict[str, str] = {}
        _W3C_BAGGAGE.inject(plain, context=strip_decisions(context))
        merged = with_decisions(plain.get("baggage", ""))
        if merged:
            setter.set(carrier, "baggage", merged)

    @property
    def fields(self) -> set[str]:
        return _W3C_BAGGAGE.fields


__all__ = [
    "ConfmeshBaggagePropagator",
    "Trust",
    "incoming_scope",
    "inject_headers",
    "strip_decisions",
    "with_decisions",
]

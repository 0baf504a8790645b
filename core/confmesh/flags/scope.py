"""Request scopes: each flag is evaluated once per request, and upstream decisions win.

Inside ``request_scope()`` the first evaluation of a flag is cached, and
later evaluations of the same flag in the same request return the cached
details, whatever context they pass and whatever snapshot arrives meanwhile.
A scope opened with upstream decisions (decoded from trusted baggage by the
gRPC interceptors or the ASGI/WSGI middleware) returns those for their flags,
with reason PROPAGATED and the upstream flag version as ``flag_version``,
unless they were made in another flag set (environment).

Scopes nest: an inner scope starts with the outer one's decisions.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Collection, Mapping
from dataclasses import replace
from types import MappingProxyType

from confmesh.flags import decisions as codec
from confmesh.flags.decisions import Decision
from confmesh.flags.details import EvaluationDetails
from confmesh.flags.hooks import HOOKS

_current: contextvars.ContextVar[FlagScope | None] = contextvars.ContextVar(
    "confmesh_flag_scope", default=None
)
current_scope = _current.get

_NONE: Mapping[str, Decision] = MappingProxyType({})
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "string": (str,),
    "integer": (int,),
    "float": (int, float),
    "object": (object,),
}


class FlagScope:
    """The flag decisions of one request; a context manager that makes it the current scope.

    Enter a scope once. Entered inside another, it starts with the outer one's
    decisions, flag set and propagation list.
    """

    __slots__ = ("_token", "evaluated", "flag_set", "local_set", "propagate", "upstream")

    def __init__(
        self,
        upstream: Mapping[str, Decision] | None = None,
        flag_set: str = "",
        propagate: Collection[str] | None = None,
    ) -> None:
        # The flag set (environment) the upstream decisions were made in.
        self.flag_set = flag_set
        self.upstream: Mapping[str, Decision] = upstream if upstream is not None else _NONE
        # None: propagate every flag evaluated here; else only these keys.
        self.propagate = None if propagate is None else frozenset(propagate)
        self.evaluated: dict[str, EvaluationDetails] = {}
        # The flag set of this service's own evaluations.
        self.local_set = ""

    def __enter__(self) -> FlagScope:
        self._token = self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)

    def enter(self) -> contextvars.Token[FlagScope | None]:
        """Make this the current scope without a ``with`` block (interceptors); undo with `close_scope`."""
        if not HOOKS.scopes:
            HOOKS.enable_scopes()
        outer = _current.get()
        if outer is not None:
            self.upstream = {**outer.upstream, **self.upstream}
            self.evaluated = dict(outer.evaluated)
            self.flag_set = self.flag_set or outer.flag_set
            self.local_set = outer.local_set
            if self.propagate is None:
                self.propagate = outer.propagate
        return _current.set(self)

    def lookup(self, key: str, getter: str, environment: str) -> EvaluationDetails | None:
        """The decision this request already holds for `key`, if any fits `getter`."""
        cached = self.evaluated.get(key)
        if cached is None:
            d = self.upstream.get(key)
            if d is None or (self.flag_set and environment and self.flag_set != environment):
                return None
            cached = d.details
            self.evaluated[key] = cached
        value = cached.value
        if not isinstance(value, _ACCEPTS.get(getter, (object,))) or (
            getter != "boolean" and isinstance(value, bool)
        ):
            return None
        if getter == "float" and type(value) is int:
            return replace(cached, value=float(value))
        return cached

    def record(self, details: EvaluationDetails, environment: str) -> None:
        """Keep a local evaluation for the rest of the request (errors are not kept)."""
        if details.error_code is None:
            self.evaluated[details.flag_key] = details
            if not self.local_set:
                self.local_set = environment

    def admit(self, upstream: Mapping[str, Decision], flag_set: str) -> None:
        """Add upstream decisions once their caller is known to be trusted."""
        self.upstream = {**self.upstream, **upstream} if self.upstream else upstream
        self.flag_set = self.flag_set or flag_set

    def outgoing(self) -> tuple[str, list[Decision]]:
        """(flag set, decisions) for downstream calls: upstream ones as received, then this request's."""
        upstream = tuple(self.upstream.values())
        own = _own(tuple(self.evaluated.values()), upstream, self.flag_set, self.local_set, self.propagate)
        return self.flag_set or self.local_set, [
            *upstream,
            *(Decision(d.flag_key, d.value, d.variant, d.flag_version) for d in own),
        ]

    def baggage(self) -> str:
        """The W3C baggage fragment carrying `outgoing()`."""
        return _baggage(
            tuple(self.evaluated.values()),
            tuple(self.upstream.values()),
            self.flag_set,
            self.local_set,
            self.propagate,
        )


def _own(
    evaluated: tuple[EvaluationDetails, ...],
    upstream: tuple[Decision, ...],
    flag_set: str,
    local_set: str,
    propagate: frozenset[str] | None,
) -> list[EvaluationDetails]:
    """A request's own decisions that travel (none when the upstream ones are from another set)."""
    if flag_set and local_set and flag_set != local_set:
        return []
    upstream_keys = {d.key for d in upstream}
    return [
        d
        for d in evaluated
        if d.flag_key not in upstream_keys and (propagate is None or d.flag_key in propagate)
    ]


@functools.lru_cache(maxsize=4096)
def _baggage(
    evaluated: tuple[EvaluationDetails, ...],
    upstream: tuple[Decision, ...],
    flag_set: str,
    local_set: str,
    propagate: frozenset[str] | None,
) -> str:
    """Cached by the identity of the (immutable, pre-built) details and decisions: the same few
    combinations recur request after request, so a call's header costs one lookup."""
    members: list[str | None] = [d.member for d in upstream]
    for d in _own(evaluated, upstream, flag_set, local_set, propagate):
        members.append(codec.encode_member(d.flag_key, d.value, d.variant, d.flag_version))
    return codec.build_header(members, flag_set or local_set)


close_scope = _current.reset

# ``with request_scope(upstream, flag_set=..., propagate=...) as scope:`` opens a request scope.
request_scope = FlagScope

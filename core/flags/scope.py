"""Request scopes: each flag is evaluated once per request, and upstream decisions win.

Inside ``request_scope()`` the first evaluation of a flag is cached, and
later evaluations of the same flag in the same request return the cached
details, whatever context they pass and whatever snapshot arrives meanwhile.
A scope opened with upstream decisions (decoded from trusted baggage by the
gRPC interceptors or the ASGI/WSGI middleware) returns those for their flags,
with reason PROPAGATED and the upstream snapshot version as ``flag_version``,
unless they were made in another flag set (environment).

Scopes nest: an inner scope starts with the outer one's decisions.
"""

from __future__ import annotations

import contextvars
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
    """The flag decisions of one request."""

    __slots__ = ("_header", "evaluated", "flag_set", "local_set", "propagate", "upstream")

    def __init__(
        self,
        upstream: Mapping[str, Decision] | None = None,
        *,
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
        self._header: str | None = None

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
        if details.error_code is None:
            self.evaluated[details.flag_key] = details
            self.local_set = self.local_set or environment
            self._header = None

    def _own(self) -> list[EvaluationDetails]:
        """This request's own decisions that travel (none when the upstream ones are from another set)."""
        if self.flag_set and self.local_set and self.flag_set != self.local_set:
            return []
        return [
            d
            for key, d in self.evaluated.items()
            if key not in self.upstream and (self.propagate is None or key in self.propagate)
        ]

    def outgoing(self) -> tuple[str, list[Decision]]:
        """(flag set, decisions) for downstream calls: upstream ones as received, then this request's."""
        own = [Decision(d.flag_key, d.value, d.variant, d.flag_version) for d in self._own()]
        return self.flag_set or self.local_set, [*self.upstream.values(), *own]

    def baggage(self) -> str:
        """The W3C baggage fragment carrying `outgoing()` (cached until the next decision)."""
        if self._header is None:
            members: list[str | None] = [d.member for d in self.upstream.values()]
            members += [codec.details_member(d) for d in self._own()]
            self._header = codec.build_header(members, self.flag_set or self.local_set)
        return self._header


def open_scope(
    upstream: Mapping[str, Decision] | None = None,
    *,
    flag_set: str = "",
    propagate: Collection[str] | None = None,
) -> contextvars.Token[FlagScope | None]:
    """Enter a request scope without a ``with`` block (for interceptors); pair with `close_scope`."""
    HOOKS.enable_scopes()
    scope = FlagScope(upstream, flag_set=flag_set, propagate=propagate)
    outer = _current.get()
    if outer is not None:
        scope.upstream = {**outer.upstream, **scope.upstream}
        scope.evaluated = dict(outer.evaluated)
        scope.flag_set = scope.flag_set or outer.flag_set
        scope.local_set = outer.local_set
        if propagate is None:
            scope.propagate = outer.propagate
    return _current.set(scope)


close_scope = _current.reset


class request_scope:
    """Open a request scope (see the module docstring); ``as`` gives the FlagScope."""

    __slots__ = ("_args", "_token")

    def __init__(
        self,
        upstream: Mapping[str, Decision] | None = None,
        *,
        flag_set: str = "",
        propagate: Collection[str] | None = None,
    ) -> None:
        self._args = (upstream, flag_set, propagate)

    def __enter__(self) -> FlagScope:
        upstream, flag_set, propagate = self._args
        self._token = open_scope(upstream, flag_set=flag_set, propagate=propagate)
        scope = _current.get()
        assert scope is not None
        return scope

    def __exit__(self, *exc: object) -> None:
        close_scope(self._token)

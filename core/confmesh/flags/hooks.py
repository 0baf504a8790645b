"""Process-wide evaluation hooks: test overrides, request scopes, observers.

The evaluator's fast getters check one attribute, ``HOOKS.active``; while it
is false (no override set, no request scope ever opened, no observer) an
evaluation costs nothing extra. Once it is true every evaluation takes the
full path in ``FlagEvaluator.details``. The attributes are read on that path
and changed only through the methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confmesh.flags.details import EvaluationDetails
    from confmesh.flags.evaluator import FlagEvaluator

Observer = Callable[["FlagEvaluator", "EvaluationDetails", "Mapping[str, Any] | None"], None]


class Hooks:
    __slots__ = ("active", "extra", "observers", "overrides", "scopes")

    def __init__(self) -> None:
        self.overrides: Mapping[str, Any] = {}
        self.observers: tuple[Observer, ...] = ()
        self.scopes = False
        # active: any hook at all. extra: overrides or observers, which only the full path serves.
        self.active = False
        self.extra = False

    def _refresh(self) -> None:
        self.extra = bool(self.overrides) or bool(self.observers)
        self.active = self.extra or self.scopes

    def set_overrides(self, values: Mapping[str, Any]) -> None:
        """Flag key -> value served to every evaluation (confmesh.flags.testing)."""
        self.overrides = dict(values)
        self._refresh()

    def enable_scopes(self) -> None:
        """Called on the first request scope; scopes stay enabled for the process."""
        if not self.scopes:
            self.scopes = True
            self._refresh()

    def add_observer(self, observer: Observer) -> Callable[[], None]:
        """Call `observer(evaluator, details, context)` after every evaluation; returns a remover."""
        self.observers = (*self.observers, observer)
        self._refresh()

        def remove() -> None:
            self.observers = tuple(o for o in self.observers if o is not observer)
            self._refresh()

        return remove


HOOKS = Hooks()

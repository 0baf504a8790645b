"""Which environment and service names the store names, and the closest known ones to a typo.

An environment is known when a layer (``env/E``, ``service/E/S``), a flag set (``flags/E``), a schema
or a rollout names it; nothing legitimate runs in an environment that none of these name, so an
unknown one is reported (and refused where a person typed it). A service is known when a service
layer, a schema or a rollout names it in any environment. A service with no layer of its own is
normal (it runs on defaults and its environment's layer), so an unknown service is reported only
when a known name is close to it: that is a typo, not a new service.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from confmesh.keys import LayerKind
from confmesh.server.record_kinds import ROLLOUTS, SCHEMAS
from confmesh.server.store import ConfigStore
from confmesh.v1 import config_pb2

CLOSEST = 3
SHOWN = 10


@dataclass(frozen=True)
class ScopeCheck:
    environment_known: bool
    service_known: bool
    message: str = ""  # empty when nothing is wrong
    closest_environments: list[str] = field(default_factory=list)
    closest_services: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.message

    def to_pb(self) -> config_pb2.ScopeNotice:
        return config_pb2.ScopeNotice(
            environment_known=self.environment_known,
            service_known=self.service_known,
            message=self.message,
            closest_environments=self.closest_environments,
            closest_services=self.closest_services,
        )


def closest(name: str, known: set[str]) -> list[str]:
    return difflib.get_close_matches(name, sorted(known), n=CLOSEST, cutoff=0.6)


def _quoted(names: list[str]) -> str:
    return " or ".join(repr(n) for n in names)


class KnownNames:
    """The names the store holds, recomputed when the store moves (a pass over layers and records)."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self._at: tuple[int, int] = (-1, -1)
        self._environments: set[str] = set()
        self._services: set[str] = set()

    def _refresh(self) -> None:
        store = self.store
        at = (store.revision, len(store.records(SCHEMAS)) + len(store.records(ROLLOUTS)))
        if at == self._at:
            return
        environments: set[str] = set()
        services: set[str] = set()
        for layer in store.layers():
            if layer.kind is not LayerKind.DEFAULTS:
                environments.add(layer.environment)
            if layer.kind is LayerKind.SERVICE:
                services.add(layer.service)
        for scope in (*store.records(SCHEMAS), *store.records(ROLLOUTS)):
            environments.add(scope.environment)
            services.add(scope.service)
        self._environments, self._services, self._at = environments, services, at

    def environments(self) -> set[str]:
        self._refresh()
        return self._environments

    def services(self) -> set[str]:
        self._refresh()
        return self._services

    def check(self, environment: str, service: str = "") -> ScopeCheck:
        """What is unknown about (`environment`, `service`), with the closest known names."""
        self._refresh()
        # With no environment named anywhere yet (defaults only), there is no name to mistype.
        env_known = environment in self._environments or not self._environments
        svc_known = not service or service in self._services
        near_envs = [] if env_known else closest(environment, self._environments)
        near_svcs = [] if svc_known else closest(service, self._services)
        problems = []
        if not env_known:
            known = sorted(self._environments)
            listed = ", ".join(known[:SHOWN]) + (", …" if len(known) > SHOWN else "")
            hint = f"; did you mean {_quoted(near_envs)}?" if near_envs else "."
            problems.append(
                f"unknown environment {environment!r} (no layer, flag set or schema names it){hint}"
                f" Known: {listed}."
            )
        if near_svcs:  # an unknown service is only a problem when it looks like a typo of a known one
            problems.append(
                f"unknown service {service!r} (no service layer, schema or rollout names it); "
                f"did you mean {_quoted(near_svcs)}?"
            )
        return ScopeCheck(env_known, svc_known, " ".join(problems), near_envs, near_svcs)


__all__ = ["KnownNames", "ScopeCheck", "closest"]

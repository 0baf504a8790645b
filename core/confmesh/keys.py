"""Names, dotted keys, layers and the etcd key layout.

etcd key layout under a prefix P (default ``/confmesh``); every part is
human-readable, so ``etcdctl get --prefix /confmesh`` is a usable view::

    P/config/defaults/<key>                      defaults: every environment and service
    P/config/env/<environment>/<key>             environment-global
    P/config/service/<environment>/<service>/<key>
    P/flags/<environment>/<flag-key>             feature flags (JSON flag definitions)
    P/meta/layers/defaults                       touched by every API write to a layer,
    P/meta/layers/env/<environment>              so a delete moves that layer's version
    P/meta/layers/service/<environment>/<service>
    P/meta/layers/flags/<environment>
    P/audit/<time-ns>-<random>                   one audit record per change (same transaction)
    P/fleet/<server-id>/<chunk>                  a replica's instance ledger, leased (fleet view)
    P/usage/<hour>/<server-id>                   a replica's flag-usage counts of one hour

Values are JSON documents. Keys are dotted paths (``database.pool.max``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from confmesh.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_KEY_LENGTH = 256
MAX_KEY_DEPTH = 16
PREFIX_RE = re.compile(r"^/[A-Za-z0-9_./-]{0,200}$")


def check_name(value: str, what: str) -> str:
    """Validate an environment or service name (a DNS label: a-z, 0-9, '-')."""
    if not NAME_RE.match(value):
        raise InvalidArgument(
            f"invalid {what} name {value!r}: use 1-63 characters a-z, 0-9 and '-', "
            "starting and ending with a letter or digit",
            code=f"invalid_{what}",
            field=what,
        )
    return value


def split_key(key: str) -> tuple[str, ...]:
    """Validate a dotted key and return its segments."""
    if not key:
        raise InvalidArgument("key must not be empty", code="invalid_key", field="key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}",
            code="invalid_key",
            field="key",
        )
    parts = tuple(key.split("."))
    if len(parts) > MAX_KEY_DEPTH:
        raise InvalidArgument(
            f"key {key!r} has {len(parts)} segments; the limit is {MAX_KEY_DEPTH}",
            code="invalid_key",
            field="key",
        )
    for part in parts:
        if not SEGMENT_RE.match(part):
            raise InvalidArgument(
                f"invalid key {key!r}: segments are 1-64 characters of A-Z, a-z, 0-9, '_' or '-', "
                "separated by single dots",
                code="invalid_key",
                field="key",
            )
    return parts


def normalize_prefix(prefix: str) -> str:
    prefix = prefix.rstrip("/") or "/confmesh"
    if not PREFIX_RE.match(prefix):
        raise InvalidArgument(f"invalid etcd prefix {prefix!r}: it must start with '/'", field="prefix")
    return prefix


class LayerKind(enum.IntEnum):
    """Layers in increasing precedence; values match the wire enum."""

    DEFAULTS = 1
    ENVIRONMENT = 2
    SERVICE = 3
    FLAGS = 4


@dataclass(frozen=True, order=True)
class Layer:
    kind: LayerKind
    environment: str = ""
    service: str = ""

    @classmethod
    def defaults(cls) -> Layer:
        return cls(LayerKind.DEFAULTS)

    @classmethod
    def env(cls, environment: str) -> Layer:
        return cls(LayerKind.ENVIRONMENT, check_name(environment, "environment"))

    @classmethod
    def svc(cls, environment: str, service: str) -> Layer:
        return cls(LayerKind.SERVICE, check_name(environment, "environment"), check_name(service, "service"))

    @classmethod
    def flags(cls, environment: str) -> Layer:
        return cls(LayerKind.FLAGS, check_name(environment, "environment"))

    @classmethod
    def from_path(cls, path: str) -> Layer:
        """The inverse of `path`: "defaults", "env/E", "service/E/S" or "flags/E"."""
        kind, *args = path.split("/")
        if kind == "defaults" and not args:
            return cls.defaults()
        if kind == "env" and len(args) == 1:
            return cls.env(args[0])
        if kind == "flags" and len(args) == 1:
            return cls.flags(args[0])
        if kind == "service" and len(args) == 2:
            return cls.svc(args[0], args[1])
        raise InvalidArgument(f"invalid layer {path!r}")

    @classmethod
    def of(cls, environment: str | None, service: str | None) -> Layer:
        """The layer a CLI-style (--env, --service) pair names."""
        if service and not environment:
            raise InvalidArgument("--service needs --env: a service layer belongs to one environment")
        if environment and service:
            return cls.svc(environment, service)
        if environment:
            return cls.env(environment)
        return cls.defaults()

    @property
    def path(self) -> str:
        """The layer's part of the etcd key layout, also its display label."""
        if self.kind is LayerKind.DEFAULTS:
            return "defaults"
        if self.kind is LayerKind.ENVIRONMENT:
            return f"env/{self.environment}"
        if self.kind is LayerKind.FLAGS:
            return f"flags/{self.environment}"
        return f"service/{self.environment}/{self.service}"

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True, order=True)
class Scope:
    """One (environment, service): the unit a snapshot is resolved for."""

    environment: str
    service: str

    @classmethod
    def checked(cls, environment: str, service: str) -> Scope:
        return cls(check_name(environment, "environment"), check_name(service, "service"))

    @property
    def layers(self) -> tuple[Layer, Layer, Layer]:
        """The scope's config layers, lowest precedence first."""
        return (
            Layer(LayerKind.DEFAULTS),
            Layer(LayerKind.ENVIRONMENT, self.environment),
            Layer(LayerKind.SERVICE, self.environment, self.service),
        )

    @property
    def flag_layer(self) -> Layer:
        return Layer(LayerKind.FLAGS, self.environment)

    def __str__(self) -> str:
        return f"{self.environment}/{self.service}"


class KeyLayout:
    """Maps layers and keys to etcd keys under one prefix, and back."""

    def __init__(self, prefix: str = "/confmesh") -> None:
        self.prefix = normalize_prefix(prefix)
        self.config_root = f"{self.prefix}/config/"
        self.flags_root = f"{self.prefix}/flags/"
        self.marker_root = f"{self.prefix}/meta/layers/"
        self.audit_root = f"{self.prefix}/audit/"
        self.token_root = f"{self.prefix}/meta/tokens/"
        self.schema_root = f"{self.prefix}/meta/schemas/"
        self.rollout_root = f"{self.prefix}/meta/rollouts/"
        self.change_root = f"{self.prefix}/meta/changes/"
        # Each replica's leased ledger summary (confmesh.server.fleet).
        self.fleet_root = f"{self.prefix}/fleet/"
        # Each replica's flag-usage counts per hour (confmesh.server.fleet.UsagePublisher).
        self.usage_root = f"{self.prefix}/usage/"

    def rollout_key(self, scope: Scope) -> str:
        return f"{self.rollout_root}{scope.environment}/{scope.service}"

    def change_key(self, change_id: str) -> str:
        return f"{self.change_root}{change_id}"

    def schema_key(self, scope: Scope) -> str:
        return f"{self.schema_root}{scope.environment}/{scope.service}"

    def config_key(self, layer: Layer, key: str) -> str:
        return f"{self.layer_root(layer)}{key}"

    def layer_root(self, layer: Layer) -> str:
        if layer.kind is LayerKind.FLAGS:
            return f"{self.flags_root}{layer.environment}/"
        return f"{self.config_root}{layer.path}/"

    def marker_key(self, layer: Layer) -> str:
        return f"{self.marker_root}{layer.path}"

    def parse(self, etcd_key: str) -> tuple[Layer, str | None] | None:
        """(layer, dotted key) for a config key, (layer, None) for a layer marker.

        Returns None for keys outside the layout; raises InvalidArgument for
        keys inside it that are malformed (e.g. written out of band).
        """
        if etcd_key.startswith(self.flags_root):
            rest = "flags/" + etcd_key[len(self.flags_root) :]
            marker = False
        elif etcd_key.startswith(self.config_root):
            rest = etcd_key[len(self.config_root) :]
            marker = False
        elif etcd_key.startswith(self.marker_root):
            rest = etcd_key[len(self.marker_root) :]
            marker = True
        else:
            return None
        parts = rest.split("/")
        kind, args = parts[0], parts[1:]
        need = {"defaults": 0, "env": 1, "flags": 1, "service": 2}.get(kind)
        if need is None:
            raise InvalidArgument(f"etcd key {etcd_key!r}: unknown layer kind {kind!r}")
        if len(args) != need + (0 if marker else 1):
            raise InvalidArgument(f"etcd key {etcd_key!r} does not match the key layout")
        if kind == "defaults":
            layer = Layer.defaults()
        elif kind == "env":
            layer = Layer.env(args[0])
        elif kind == "flags":
            layer = Layer.flags(args[0])
        else:
            layer = Layer.svc(args[0], args[1])
        if marker:
            return layer, None
        key = args[-1]
        split_key(key)
        return layer, key

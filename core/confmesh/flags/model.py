"""The flag model and flag-set validation.

A flag, in its JSON form::

    {
      "key": "new-checkout", "kind": "release", "owner": "team-checkout",
      "description": "...", "created": "2026-11-01T00:00:00Z", "expires": "2027-02-01T00:00:00Z",
      "enabled": true,
      "variants": {"on": true, "off": false},
      "default_variant": "off",             # served when on and nothing matched
      "off_variant": "off",                 # served when off (null: the caller's default)
      "prerequisites": [{"flag": "checkout-api", "variant": "on"}],
      "targets": [{"variant": "on", "values": ["user-1", "user-2"]}],
      "rules": [
        {"id": "premium", "clauses": [{"attribute": "tier", "op": "in", "values": ["premium"]}],
         "serve": {"variant": "on"}},
        {"id": "quarter", "serve": {"split": [{"variant": "on", "percent": 25},
                                             {"variant": "off", "percent": 75}]}},
        {"id": "ramp", "serve": {"rollout": {"variant": "on", "other": "off",
                                            "start": "2026-12-01T00:00:00Z", "end": "2026-12-08T00:00:00Z"}}}
      ],
      "bucket_by": null, "salt": "", "bucketing": "murmur3"
    }

A rule without clauses matches everyone. ``bucket_by`` null means the
context's ``targetingKey``, else ``userId``, else ``sessionId``. A variant
name of null anywhere means "the caller's default value".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import re2
import semver
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from confmesh.errors import FieldIssue, InvalidArgument

# Dot-separated segments of letters, digits, symbols, `_` and `-` in any script (Unleash
# allows `Feature.UTF-8.Hellø_Wørld`); no whitespace, no control characters, no `/` or quotes.
_SEGMENT = r"[^\s./\\\"'<>=,;!%\x00-\x1f\x7f]{1,64}"
FLAG_KEY_RE = rf"^{_SEGMENT}(\.{_SEGMENT}){{0,15}}$"
MAX_METADATA = 50
MAX_TARGET_VALUES = 10_000
MAX_RULES = 200
MAX_REGEX_LENGTH = 1_000

STRING_OPS = ("equals", "not_equals", "contains", "starts_with", "ends_with", "in", "not_in", "regex")
NUMBER_OPS = ("lt", "lte", "gt", "gte")
SEMVER_OPS = ("semver_eq", "semver_lt", "semver_lte", "semver_gt", "semver_gte")
Op = Literal[
    "equals", "not_equals", "contains", "starts_with", "ends_with", "in", "not_in", "regex",
    "lt", "lte", "gt", "gte",
    "semver_eq", "semver_lt", "semver_lte", "semver_gt", "semver_gte",
]  # fmt: skip

Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Clause(_Strict):
    attribute: str = Field(min_length=1, max_length=256)
    op: Op
    values: list[Scalar] = Field(min_length=1, max_length=MAX_TARGET_VALUES)

    @model_validator(mode="after")
    def _check_values(self) -> Clause:
        if (
            self.op in ("equals", "not_equals", "contains", "starts_with", "ends_with", "regex")
            and len(self.values) != 1
            and self.op != "contains"
        ):
            raise ValueError(f"op {self.op!r} takes exactly one value")
        if self.op in ("starts_with", "ends_with", "regex") and not isinstance(self.values[0], str):
            raise ValueError(f"op {self.op!r} takes a string value")
        number = self.values[0]
        if self.op in NUMBER_OPS and (
            len(self.values) != 1 or isinstance(number, bool) or not isinstance(number, (int, float))
        ):
            raise ValueError(f"op {self.op!r} takes exactly one number")
        if self.op in SEMVER_OPS:
            if len(self.values) != 1 or not isinstance(self.values[0], str):
                raise ValueError(f"op {self.op!r} takes exactly one version string")
            try:
                semver.Version.parse(self.values[0])
            except ValueError as exc:
                raise ValueError(f"{self.values[0]!r} is not a semantic version: {exc}") from exc
        if self.op == "regex":
            pattern = self.values[0]
            assert isinstance(pattern, str)
            if len(pattern) > MAX_REGEX_LENGTH:
                raise ValueError(f"regex is longer than {MAX_REGEX_LENGTH} characters")
            try:
                re2.compile(pattern)
            except re2.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile (RE2 syntax): {exc}") from exc
        return self


class SplitPart(_Strict):
    variant: str | None
    percent: float = Field(ge=0, le=100)

    @field_validator("percent")
    @classmethod
    def _two_decimals(cls, value: float) -> float:
        if abs(round(value * 100) - value * 100) > 1e-6:
            raise ValueError("percent takes at most two decimals (10,000 buckets)")
        return value

    @property
    def bps(self) -> int:
        return round(self.percent * 100)


class Rollout(_Strict):
    """A linear ramp: 0% of users get `variant` at `start`, 100% at `end`."""

    variant: str | None
    other: str | None
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> Rollout:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a timezone (e.g. 2026-12-01T00:00:00Z)")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Serve(_Strict):
    """Exactly one of: a variant, a percentage split, a time-based rollout."""

    variant: str | None = None
    split: list[SplitPart] | None = None
    rollout: Rollout | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in ("variant", "split", "rollout") if k in data]
            if len(given) != 1:
                raise ValueError("serve takes exactly one of 'variant', 'split' or 'rollout'")
        return data

    @model_validator(mode="after")
    def _split_sums(self) -> Serve:
        if self.split is not None:
            total = sum(part.bps for part in self.split)
            if not self.split or total != 10_000:
                raise ValueError(f"split percents must sum to 100 (they sum to {total / 100:g})")
        return self

    def variant_names(self) -> list[str | None]:
        if self.split is not None:
            return [p.variant for p in self.split]
        if self.rollout is not None:
            return [self.rollout.variant, self.rollout.other]
        return [self.variant]


class Rule(_Strict):
    id: str = Field(default="", max_length=128)
    clauses: list[Clause] = Field(default_factory=list, max_length=50)
    serve: Serve


class Target(_Strict):
    variant: str | None
    values: list[str] = Field(min_length=1, max_length=MAX_TARGET_VALUES)
    attribute: str | None = None


class Prerequisite(_Strict):
    """`flag` must be on and serve `variant` (or any of `variants`).

    With ``enabled: false`` the dependency is inverted: it holds while `flag` is
    off, or serves one of `variants` (Unleash's "parent disabled" dependency).
    """

    flag: str
    variant: str | None = None
    variants: list[str] = Field(default_factory=list, max_length=100)
    enabled: bool = True

    @model_validator(mode="after")
    def _names_a_variant(self) -> Prerequisite:
        if self.enabled and self.variant is None and not self.variants:
            raise ValueError("a prerequisite names the variant (or variants) the flag must serve")
        return self

    @property
    def accepted(self) -> frozenset[str]:
        names = set(self.variants)
        if self.variant is not None:
            names.add(self.variant)
        return frozenset(names)


VariantValue = Annotated[
    StrictBool | StrictInt | StrictFloat | StrictStr | dict[str, Any] | list[Any],
    Field(union_mode="left_to_right"),
]


def value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


class Flag(_Strict):
    key: str = Field(pattern=FLAG_KEY_RE)
    description: str = Field(default="", max_length=2_000)
    owner: str = Field(default="", max_length=256)
    kind: Literal["release", "experiment", "ops", "permission"] = "release"
    created: datetime | None = None
    expires: datetime | None = None
    enabled: bool = True
    variants: dict[str, VariantValue] = Field(min_length=1, max_length=100)
    default_variant: str | None
    off_variant: str | None = None
    prerequisites: list[Prerequisite] = Field(default_factory=list, max_length=20)
    targets: list[Target] = Field(default_factory=list, max_length=100)
    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)
    bucket_by: str | None = None
    salt: str = Field(default="", max_length=256)
    bucketing: Literal["murmur3", "murmur3-cbor", "legacy-md5"] = "murmur3"
    # A JsonLogic expression (flagd's dialect) yielding a variant name, tried after the rules.
    targeting: dict[str, Any] | None = None
    # Served with every evaluation (OpenFeature flag metadata); flagd's flag-set metadata merged in.
    metadata: dict[
        Annotated[str, Field(min_length=1, max_length=256)],
        Annotated[StrictBool | StrictInt | StrictFloat | Annotated[str, Field(max_length=1_000)],
                  Field(union_mode="left_to_right")],
    ] = Field(default_factory=dict, max_length=MAX_METADATA)  # fmt: skip

    @field_validator("targeting")
    @classmethod
    def _compiles(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if not value:
            return None
        from confmesh.flags.jsonlogic import LogicError, compile_logic
        from confmesh.flags.unleash_ops import UNLEASH_OPERATORS

        try:
            compile_logic(value, extensions=UNLEASH_OPERATORS)
        except LogicError as exc:
            raise ValueError(f"targeting{'.' + exc.path if exc.path else ''}: {exc.message}") from None
        return value

    @field_validator("variants", mode="before")
    @classmethod
    def _string_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise ValueError(
                    f"variant names must be strings, got {bad!r} "
                    "(YAML reads bare on/off/yes/no as booleans: quote them)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Flag:
        types = {value_type(v) for v in self.variants.values()}
        if len(types) > 1:
            raise ValueError(f"variants must all have one type; found {', '.join(sorted(types))}")
        names: list[tuple[str, str | None]] = [
            ("default_variant", self.default_variant),
            ("off_variant", self.off_variant),
        ]
        names += [(f"targets[{i}].variant", t.variant) for i, t in enumerate(self.targets)]
        for i, rule in enumerate(self.rules):
            names += [(f"rules[{i}].serve", v) for v in rule.serve.variant_names()]
        for where, name in names:
            if name is not None and name not in self.variants:
                raise ValueError(f"{where}: unknown variant {name!r} (variants: {', '.join(self.variants)})")
        if self.created and self.expires and self.expires <= self.created:
            raise ValueError("expires must be after created")
        if any(p.flag == self.key for p in self.prerequisites):
            raise ValueError("a flag cannot be its own prerequisite")
        return self

    @property
    def type(self) -> str:
        return value_type(next(iter(self.variants.values())))


class FlagSet(BaseModel):
    """All flags of one environment, checked as a whole."""

    model_config = ConfigDict(frozen=True)
    flags: dict[str, Flag]

    @model_validator(mode="after")
    def _cross_checks(self) -> FlagSet:
        check_flag_set(self.flags)
        return self


def check_flag_set(flags: Mapping[str, Flag]) -> None:
    """What holds between the flags of a set: keys, prerequisites, no cycles (ValueError)."""
    for key, flag in flags.items():
        if flag.key != key:
            raise ValueError(f"{key}: the flag's key is {flag.key!r}")
        for p in flag.prerequisites:
            other = flags.get(p.flag)
            if other is None:
                raise ValueError(f"{key}: prerequisite flag {p.flag!r} does not exist")
            for name in sorted(p.accepted):
                if name not in other.variants:
                    raise ValueError(f"{key}: prerequisite {p.flag!r} has no variant {name!r}")
    graph = {k: [p.flag for p in f.prerequisites] for k, f in flags.items() if f.prerequisites}
    cycle = find_cycle(graph)
    if cycle:
        raise ValueError(f"prerequisite cycle: {' -> '.join(cycle)}")


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if state.get(nxt, 0) == 0 and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node, 0) == 0 and (found := visit(node)):
            return found
    return None


def _issues(exc: ValidationError, prefix: str) -> list[FieldIssue]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"] if p != "flags")
        msg = re.sub(r"^Value error, ", "", err["msg"])
        out.append(FieldIssue(f"{prefix}.{path}" if path else prefix, msg))
    return out


def parse_flag_set(flags: dict[str, Any], *, prefix: str = "flags") -> FlagSet:
    """Validate a flag set; InvalidArgument names the first failing field."""
    try:
        return FlagSet.model_validate({"flags": flags})
    except ValidationError as exc:
        issues = _issues(exc, prefix)
        first = issues[0]
        raise InvalidArgument(f"invalid flag set: {first}", code="invalid_flag", field=first.path) from exc


def reparse_flag_set(flags: dict[str, Any], before: Mapping[str, Any], parsed: FlagSet) -> FlagSet:
    """`parse_flag_set(flags)`, parsing again only the definitions that differ from `before`.

    `parsed` is `before` parsed. A definition that is the same object as before, or equal to it,
    keeps its parsed Flag, so a one-flag change costs one flag's parse plus the set's cross
    checks. Whatever fails is parsed again in full, so the error is exactly the full parse's.
    """
    kept = parsed.flags
    try:
        out: dict[str, Flag] = {}
        for key, definition in flags.items():
            old = before.get(key, _ABSENT)
            previous = kept.get(key)
            if previous is not None and (old is definition or old == definition):
                out[key] = previous
            else:
                out[key] = Flag.model_validate(definition)
        check_flag_set(out)
    except (ValidationError, ValueError):
        return parse_flag_set(flags)
    # Every flag is a validated Flag and the set passed its checks: what validation would build.
    return FlagSet.model_construct(flags=out)


_ABSENT = object()


def parse_flag(definition: Any, *, key: str | None = None) -> Flag:
    try:
        flag = Flag.model_validate(definition)
    except ValidationError as exc:
        first = _issues(exc, f"flags.{key}" if key else "flag")[0]
        raise InvalidArgument(f"invalid flag: {first}", code="invalid_flag", field=first.path) from exc
    if key is not None and flag.key != key:
        raise InvalidArgument(f"flag key {flag.key!r} does not match {key!r}", field="key")
    return flag


def keyed(key: str, definition: Any) -> Any:
    """A flag definition as stored: carrying its own key (added when the writer left it out)."""
    return (
        {**definition, "key": key} if isinstance(definition, dict) and "key" not in definition else definition
    )

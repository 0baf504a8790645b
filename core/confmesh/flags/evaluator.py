"""Local flag evaluation: flags compiled to closures, details pre-built.

Each flag of a snapshot is compiled once into a function ``ctx -> details``.
Every possible outcome (variant x reason x rule) is an immutable
``EvaluationDetails`` built at compile time, so evaluating allocates nothing
on the common paths. The order follows LaunchDarkly's: off → prerequisites →
individual targets → rules in order → JsonLogic targeting → default variant.

Getters never raise into a request path: on any error they return the
caller's default, with the error in the details.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mmh3
import re2
import semver

from confmesh.flags.bucketing import BUCKETS, legacy_md5_bucket
from confmesh.flags.budget import BudgetExceeded, spend
from confmesh.flags.details import NO_METADATA, ErrorCode, EvaluationDetails, Metadata, Reason
from confmesh.flags.hooks import HOOKS
from confmesh.flags.jsonlogic import compile_logic, to_python_str
from confmesh.flags.model import Clause, Flag, FlagSet, Rule, Serve, parse_flag_set
from confmesh.flags.scope import current_scope
from confmesh.flags.unleash_ops import UNLEASH_OPERATORS

log = logging.getLogger("confmesh.flags")

Context = Mapping[str, Any]


_CALLER_DEFAULT = object()
_MISSING = object()

Outcome = Callable[[Context], EvaluationDetails]
Matcher = Callable[[Context], bool]


@functools.lru_cache(maxsize=4096)
def _semver(text: str) -> semver.Version | None:
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def _typed_key(x: Any) -> tuple[bool, Any]:
    """A value as a set member that keeps True apart from 1 (as the clause's JSON equality does)."""
    return (type(x) is bool, x)


def _hashable_items(items: Any) -> Iterator[tuple[bool, Any]]:
    return (_typed_key(x) for x in items if isinstance(x, (str, int, float, bool)))


def compile_clause(clause: Clause) -> Matcher:
    """ctx -> bool; a missing attribute never matches."""
    attr, op, values = clause.attribute, clause.op, clause.values
    first = values[0]
    if op in ("in", "not_in", "equals", "not_equals"):
        wanted = values if op in ("in", "not_in") else [first]
        if all(type(v) is str for v in wanted):
            strings = frozenset(wanted)
            if op in ("in", "equals"):
                return lambda ctx: type(v := ctx.get(attr)) is str and v in strings
            return lambda ctx: type(v := ctx.get(attr)) is str and v not in strings
        typed = frozenset((type(v) is bool, v) for v in wanted)
        positive = op in ("in", "equals")

        def match_typed(ctx: Context) -> bool:
            v = ctx.get(attr, _MISSING)
            if v is _MISSING or not isinstance(v, (str, int, float, bool)):
                return False
            return ((type(v) is bool, v) in typed) is positive

        return match_typed
    if op == "contains":
        hashed = frozenset(_typed_key(x) for x in values)

        needles = [x for x in values if isinstance(x, str)]

        def contains(ctx: Context) -> bool:
            v = ctx.get(attr)
            if isinstance(v, str):
                spend(len(needles))
                return any(x in v for x in needles)
            if isinstance(v, (list, tuple, set, frozenset)):
                spend(len(v))  # linear: one pass over the context's list, then set lookups
                return not hashed.isdisjoint(_hashable_items(v))
            return False

        return contains
    if op == "starts_with":
        prefix = str(first)
        return lambda ctx: type(v := ctx.get(attr)) is str and v.startswith(prefix)
    if op == "ends_with":
        suffix = str(first)
        return lambda ctx: type(v := ctx.get(attr)) is str and v.endswith(suffix)
    if op == "regex":
        pattern = re2.compile(str(first))
        return lambda ctx: type(v := ctx.get(attr)) is str and pattern.search(v) is not None
    if op in ("lt", "lte", "gt", "gte"):
        bound = float(first)
        compare: Callable[[float], bool] = {
            "lt": lambda x: x < bound, "lte": lambda x: x <= bound,
            "gt": lambda x: x > bound, "gte": lambda x: x >= bound,
        }[op]  # fmt: skip

        def match_number(ctx: Context) -> bool:
            v = ctx.get(attr)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and compare(v)

        return match_number
    version = semver.Version.parse(str(first))
    check: Callable[[semver.Version], bool] = {
        "semver_eq": lambda x: x == version, "semver_lt": lambda x: x < version,
        "semver_lte": lambda x: x <= version, "semver_gt": lambda x: x > version,
        "semver_gte": lambda x: x >= version,
    }[op]  # fmt: skip

    def match_semver(ctx: Context) -> bool:
        v = ctx.get(attr)
        parsed = _semver(v) if isinstance(v, str) else None
        return parsed is not None and check(parsed)

    return match_semver


def compile_rule(rule: Rule) -> Matcher | None:
    """None for a rule without clauses (it matches everyone)."""
    matchers = [compile_clause(c) for c in rule.clauses]
    if not matchers:
        return None
    if len(matchers) == 1:
        return matchers[0]
    return lambda ctx: all(m(ctx) for m in matchers)


def bucket_value(bucket_by: str | None) -> Callable[[Context], str | None]:
    if bucket_by is None:

        def default_key(ctx: Context) -> str | None:
            v = ctx.get("targetingKey")
            if v.__class__ is str and v:
                return v  # type: ignore[no-any-return]
            for name in ("targetingKey", "userId", "sessionId"):
                v = ctx.get(name)
                if v is not None and v != "":
                    return v if type(v) is str else str(v)
            return None

        return default_key

    def attribute_key(ctx: Context) -> str | None:
        v = ctx.get(bucket_by)
        if v is None or v == "":
            return None
        return v if type(v) is str else str(v)

    return attribute_key


@dataclass
class CompiledFlag:
    flag: Flag
    type: str
    evaluate: Callable[[Context, FlagEvaluator], EvaluationDetails]
    rule_matchers: list[Matcher | None] = field(default_factory=list)
    # Set when the outcome never depends on the context (static or off).
    constant: EvaluationDetails | None = None
    # The snapshot version its outcomes carry: the one this definition arrived in.
    version: int = 0


class _Builder:
    """Compiles one flag; caches one details object per distinct outcome."""

    def __init__(self, flag: Flag, version: int, clock: Callable[[], float]) -> None:
        self.flag = flag
        self.version = version
        self.clock = clock
        self._outcomes: dict[tuple[str | None, Reason, str], EvaluationDetails] = {}
        self.metadata: Mapping[str, Any] = Metadata(flag.metadata) if flag.metadata else NO_METADATA
        self.user_key = bucket_value(None)
        self.bucket_key = bucket_value(flag.bucket_by)
        if flag.bucketing == "legacy-md5":
            name = flag.key
            self.bucket: Callable[[str], int] = lambda value: legacy_md5_bucket(name, value)
        else:
            # murmur3_bucket(salt, key, value), inlined: one call fewer per evaluation.
            prefix, murmur, buckets = flag.salt + flag.key, mmh3.hash, BUCKETS
            self.bucket = lambda value: (murmur(prefix + value, 0, False) * buckets) >> 32
        self.missing_key = EvaluationDetails(
            flag.key, _CALLER_DEFAULT, None, Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING,
            f"flag {flag.key!r} needs a bucketing key: set "
            + (f"{flag.bucket_by!r}" if flag.bucket_by else "targetingKey, userId or sessionId")
            + " in the evaluation context",
            flag_version=version, metadata=self.metadata,
        )  # fmt: skip

    def outcome(self, variant: str | None, reason: Reason, rule: str = "") -> EvaluationDetails:
        cache_key = (variant, reason, rule)
        details = self._outcomes.get(cache_key)
        if details is None:
            value = self.flag.variants[variant] if variant is not None else _CALLER_DEFAULT
            details = EvaluationDetails(
                self.flag.key, value, variant, reason, rule=rule, flag_version=self.version,
                metadata=self.metadata, usage_slot=usage_slot(self.flag.key, variant),
            )  # fmt: skip
            self._outcomes[cache_key] = details
        return details

    def serve(self, serve: Serve, reason: Reason, rule: str) -> Outcome:
        if serve.split is not None:
            cuts: list[tuple[int, EvaluationDetails]] = []
            total = 0
            for part in serve.split:
                total += part.bps
                cuts.append((total, self.outcome(part.variant, Reason.SPLIT, rule)))
            key, bucket, missing = self.bucket_key, self.bucket, self.missing_key

            def split(ctx: Context) -> EvaluationDetails:
                value = key(ctx)
                if value is None:
                    return missing
                b = bucket(value)
                for cut, details in cuts:
                    if b < cut:
                        return details
                return cuts[-1][1]

            return split
        if serve.rollout is not None:
            ramp = serve.rollout
            start, end = ramp.start.timestamp(), ramp.end.timestamp()
            on = self.outcome(ramp.variant, Reason.SPLIT, rule)
            other = self.outcome(ramp.other, Reason.SPLIT, rule)
            key, bucket, missing, clock = self.bucket_key, self.bucket, self.missing_key, self.clock

            def rollout(ctx: Context) -> EvaluationDetails:
                now = clock()
                if now >= end:
                    return on
                if now <= start:
                    return other
                value = key(ctx)
                if value is None:
                    return missing
                threshold = int((now - start) / (end - start) * 10_000)
                return on if bucket(value) < threshold else other

            return rollout
        fixed = self.outcome(serve.variant, reason, rule)
        return lambda ctx: fixed

    def targeting(self, fallback: EvaluationDetails) -> Outcome | None:
        """The flag's JsonLogic targeting as flagd resolves it: null serves the default variant,
        true/false name the variants "true"/"false", a name the flag lacks is an error."""
        flag = self.flag
        if not flag.targeting:
            return None
        logic = compile_logic(
            flag.targeting,
            flag_key=flag.key,
            clock=self.clock,
            extensions=UNLEASH_OPERATORS,
            cbor_fractional=flag.bucketing == "murmur3-cbor",
        )
        table = {name: self.outcome(name, Reason.TARGETING_MATCH, "targeting") for name in flag.variants}
        key, version, metadata = flag.key, self.version, self.metadata

        def resolve(ctx: Context) -> EvaluationDetails:
            name = logic(ctx)
            if name is None:
                return fallback
            hit = table.get(name) if type(name) is str else None
            if hit is not None:
                return hit
            text = name if type(name) is str else to_python_str(name)
            hit = table.get(text)
            if hit is not None:
                return hit
            return EvaluationDetails(
                key, _CALLER_DEFAULT, None, Reason.ERROR, ErrorCode.GENERAL,
                f"flag {key!r}: targeting resolved variant {text!r}, which the flag does not have",
                flag_version=version, metadata=metadata,
            )  # fmt: skip

        return resolve

    def compile(self) -> CompiledFlag:
        compiled = self._compile()
        compiled.version = self.version
        return compiled

    def _compile(self) -> CompiledFlag:
        flag = self.flag
        if not flag.enabled:
            off = self.outcome(flag.off_variant, Reason.DISABLED)
            return CompiledFlag(flag, flag.type, lambda ctx, ev: off, constant=off)
        has_logic = bool(flag.prerequisites or flag.targets or flag.rules or flag.targeting)
        static = not has_logic and flag.default_variant is not None
        fallback = self.outcome(flag.default_variant, Reason.STATIC if static else Reason.DEFAULT)
        if not has_logic:
            return CompiledFlag(flag, flag.type, lambda ctx, ev: fallback, constant=fallback)

        prereqs = [(p.flag, p.accepted, p.enabled) for p in flag.prerequisites]
        prereq_failed = {
            p.flag: self.outcome(flag.off_variant, Reason.PREREQUISITE_FAILED, f"prerequisite:{p.flag}")
            for p in flag.prerequisites
        }
        targets: list[tuple[Callable[[Context], str | None], dict[str, EvaluationDetails]]] = []
        for target in flag.targets:
            lookup_key = self.user_key if target.attribute is None else bucket_value(target.attribute)
            outcome = self.outcome(target.variant, Reason.TARGETING_MATCH, "target")
            table = {value: outcome for value in target.values}
            targets.append((lookup_key, table))
        matchers = [compile_rule(rule) for rule in flag.rules]
        rules = [
            (m, self.serve(rule.serve, Reason.TARGETING_MATCH, rule.id or f"rules[{i}]"))
            for i, (m, rule) in enumerate(zip(matchers, flag.rules, strict=True))
        ]

        targeting = self.targeting(fallback)

        def evaluate(ctx: Context, ev: FlagEvaluator) -> EvaluationDetails:
            for pkey, accepted, must_be_on in prereqs:
                served = ev.evaluate_variant(pkey, ctx)
                if must_be_on:
                    if served not in accepted:
                        return prereq_failed[pkey]
                elif served is not None and served not in accepted:
                    return prereq_failed[pkey]
            for lookup_key, table in targets:
                k = lookup_key(ctx)
                if k is not None and (hit := table.get(k)) is not None:
                    return hit
            for matcher, serve in rules:
                if matcher is None or matcher(ctx):
                    return serve(ctx)
            if targeting is not None:
                return targeting(ctx)
            return fallback

        if targeting is not None and not prereqs and not targets and not rules:
            return CompiledFlag(flag, flag.type, lambda ctx, ev: targeting(ctx), matchers)
        if not prereqs and not targets and len(rules) == 1 and targeting is None:
            matcher, only = rules[0]
            if matcher is None:
                return CompiledFlag(flag, flag.type, lambda ctx, ev: only(ctx), matchers)
            serve = flag.rules[0].serve
            if serve.split is None and serve.rollout is None:
                hit = self.outcome(serve.variant, Reason.TARGETING_MATCH, flag.rules[0].id or "rules[0]")
                return CompiledFlag(
                    flag, flag.type, lambda ctx, ev: hit if matcher(ctx) else fallback, matchers
                )
            return CompiledFlag(
                flag, flag.type, lambda ctx, ev: only(ctx) if matcher(ctx) else fallback, matchers
            )
        return CompiledFlag(flag, flag.type, evaluate, matchers)


# Every (flag, variant) an outcome has been built for gets a slot, process-wide, so counting
# an evaluation is one list increment: cheaper than a dict update, and nothing allocated.
# Slot 0 is the uncounted slot of outcomes built on the fly (errors).
_SLOTS: dict[tuple[str, str], int] = {}
_SLOT_KEYS: list[tuple[str, str]] = [("", "")]


def usage_slot(flag_key: str, variant: str | None) -> int:
    key = (flag_key, variant or "")
    slot = _SLOTS.get(key)
    if slot is None:
        slot = _SLOTS[key] = len(_SLOT_KEYS)
        _SLOT_KEYS.append(key)
    return slot


class UsageCounter:
    """Evaluation counts per (flag, variant), swapped out whole when reported."""

    def __init__(self) -> None:
        # Never replaced, so evaluators can hold it directly; take() zeroes it in place.
        self.counts: list[int] = [0] * len(_SLOT_KEYS)

    def cover(self) -> None:
        """Make room for every slot allocated so far (evaluators call this when built)."""
        if len(self.counts) < len(_SLOT_KEYS):
            self.counts.extend([0] * (len(_SLOT_KEYS) - len(self.counts)))

    def take(self) -> dict[tuple[str, str], int]:
        counts = self.counts[:]
        self.counts[:] = [0] * len(counts)
        return {_SLOT_KEYS[i]: n for i, n in enumerate(counts) if n and i}


_GETTER_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("boolean",),
    "string": ("string",),
    "integer": ("number",),
    "float": ("number",),
    "object": ("object",),
}
_EMPTY: Context = {}


class FlagEvaluator:
    get_bool_details: Callable[..., EvaluationDetails]
    get_str_details: Callable[..., EvaluationDetails]
    get_object_details: Callable[..., EvaluationDetails]
    get_bool: Callable[..., bool]
    get_str: Callable[..., str]
    get_object: Callable[..., Any]
    is_enabled: Callable[..., bool]
    _compiled: dict[str, CompiledFlag]
    _usage: UsageCounter | None

    """Evaluates one environment's flags locally.

    ``is_enabled`` and ``get_bool/str/int/float/object(key, default, context)``
    return values; the ``*_details`` variants return ``EvaluationDetails``.
    The context is a mapping: ``{"targetingKey": "user-1", "tier": "premium"}``.
    """

    def __init__(
        self,
        flags: FlagSet | Mapping[str, Any] | None = None,
        *,
        version: int = 0,
        environment: str = "",
        clock: Callable[[], float] = time.time,
        usage: UsageCounter | None = None,
        previous: FlagEvaluator | None = None,
        broken: Mapping[str, str] | None = None,
    ) -> None:
        """`previous`: the evaluator this one replaces. Its compiled flags whose definition is
        the same parsed Flag (see `reparse_flag_set`) are kept, outcomes and version included,
        so a change costs what it changed, not the size of the flag set.

        `broken`: flags of an offline file that did not translate, answered with PARSE_ERROR
        (as flagd answers a flag whose targeting does not parse)."""
        if flags is None:
            flags = FlagSet(flags={})
        elif not isinstance(flags, FlagSet):
            flags = parse_flag_set(dict(flags))
        self.flag_set = flags
        self.broken = dict(broken or {})
        self.version = version
        self.environment = environment
        self.clock = clock
        kept: dict[str, CompiledFlag] = {}
        if previous is not None and previous.clock is clock and previous._usage is usage:
            kept = previous._compiled
        self._compiled = {}
        for key, flag in flags.flags.items():
            old = kept.get(key)
            if old is None or old.flag is not flag:
                old = _Builder(flag, version, clock).compile()
            self._compiled[key] = old
        self._depth = 0
        self._usage = usage
        if usage is not None:
            usage.cover()
        by_type: dict[str, dict[str, Any]] = {}
        for key, compiled in self._compiled.items():
            constant = compiled.constant
            usable = constant is not None and constant.value is not _CALLER_DEFAULT
            by_type.setdefault(compiled.type, {})[key] = constant if usable else compiled.evaluate
        for name, flag_type, getter in (("bool", "boolean", "boolean"), ("str", "string", "string"),
                                        ("object", "object", "object")):  # fmt: skip
            details_fn, value_fn = self._fast_getters(by_type.get(flag_type, {}), getter)
            setattr(self, f"get_{name}_details", details_fn)
            setattr(self, f"get_{name}", value_fn)
            if name == "bool":
                self.is_enabled = lambda key, context=None, _get=value_fn: _get(key, False, context)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        format: str | None = None,
        fractional: str = "v2",
        clock: Callable[[], float] = time.time,
    ) -> FlagEvaluator:
        """Offline mode: flags from a JSON/YAML file in confmesh's, classic, flagd or Unleash format.

        As flagd does, a flag of the file that does not translate answers PARSE_ERROR and the
        others evaluate (`confmesh flags import` refuses such a file whole)."""
        from confmesh.flags.files import load_document, read_document

        doc = read_document(load_document(path), source=str(path), format=format, fractional=fractional)
        return cls(doc.lenient_set(), clock=clock, broken=doc.broken)

    def keys(self) -> list[str]:
        return sorted(self._compiled)

    def flag(self, key: str) -> Flag | None:
        compiled = self._compiled.get(key)
        return compiled.flag if compiled else None

    def flag_version(self, key: str) -> int:
        """The snapshot version `key`'s definition arrived in (its outcomes' `flag_version`);
        the evaluator's own version for a flag it does not hold."""
        compiled = self._compiled.get(key)
        return compiled.version if compiled else self.version

    # -- the core -------------------------------------------------------------

    def evaluate_variant(self, key: str, ctx: Context) -> str | None:
        """The variant `key` serves for `ctx` as a prerequisite: None when it is missing or off
        (a prerequisite must be on and serve the named variant, whatever its off variant is)."""
        compiled = self._compiled.get(key)
        if compiled is None or not compiled.flag.enabled:
            return None
        self._depth += 1
        try:
            if self._depth > 32:
                return None
            return compiled.evaluate(ctx, self).variant
        finally:
            self._depth -= 1

    def details(self, key: str, default: Any, context: Context | None, getter: str) -> EvaluationDetails:
        """The full evaluation path: overrides, the request scope, observers (see flags.hooks)."""
        hooks = HOOKS
        overrides = hooks.overrides
        if overrides and key in overrides:
            details = EvaluationDetails(
                key, overrides[key], None, Reason.STATIC, rule="override", flag_version=self.version
            )
        elif hooks.scopes and (scope := current_scope()) is not None:
            hit = scope.lookup(key, getter, self.environment)
            if hit is None:
                details = self._evaluate(key, default, context, getter)
                scope.record(details, self.environment)
            else:
                details = hit
        else:
            details = self._evaluate(key, default, context, getter)
        for observer in hooks.observers:
            try:
                observer(self, details, context)
            except Exception:  # an observer must never break an evaluation
                log.exception("flag evaluation observer %r failed", observer)
        return details

    def _evaluate(self, key: str, default: Any, context: Context | None, getter: str) -> EvaluationDetails:
        compiled = self._compiled.get(key)
        if compiled is None:
            if key in self.broken:
                return EvaluationDetails(
                    key, default, None, Reason.ERROR, ErrorCode.PARSE_ERROR,
                    f"flag {key!r} does not parse: {self.broken[key]}", flag_version=self.version,
                )  # fmt: skip
            return EvaluationDetails(
                key,
                default,
                None,
                Reason.ERROR,
                ErrorCode.FLAG_NOT_FOUND,
                f"flag {key!r} not found",
                flag_version=self.version,
            )
        if compiled.type not in _GETTER_TYPES[getter]:
            return EvaluationDetails(
                key, default, None, Reason.ERROR, ErrorCode.TYPE_MISMATCH,
                f"flag {key!r} is a {compiled.type} flag, read as {getter}", flag_version=self.version,
            )  # fmt: skip
        try:
            details = compiled.evaluate(context if context is not None else _EMPTY, self)
        except BudgetExceeded:
            raise  # a server's refusal of the whole request (confmesh.flags.budget), not this flag's error
        except Exception as exc:  # never into the request path
            log.exception("evaluating flag %r failed", key)
            return EvaluationDetails(
                key, default, None, Reason.ERROR, ErrorCode.GENERAL, str(exc), flag_version=self.version
            )
        if self._usage is not None:
            self._usage.counts[details.usage_slot] += 1
        if details.value is _CALLER_DEFAULT:
            return replace(details, value=default)
        if getter == "integer" and type(details.value) is float:
            if not details.value.is_integer():
                return EvaluationDetails(
                    key, default, None, Reason.ERROR, ErrorCode.TYPE_MISMATCH,
                    f"flag {key!r} served {details.value}, not an integer", flag_version=self.version,
                )  # fmt: skip
            return replace(details, value=int(details.value))
        return details

    def _fast_getters(
        self, table: dict[str, Any], getter: str
    ) -> tuple[Callable[..., EvaluationDetails], Callable[..., Any]]:
        """Getters for one flag type: the common case in one call, the rest via details().

        `table` maps a flag key to its evaluate function, or to its details
        object when the outcome never depends on the context.
        """
        slow, empty, caller_default, hooks = self.details, _EMPTY, _CALLER_DEFAULT, HOOKS
        details_class = EvaluationDetails
        counts = self._usage.counts if self._usage is not None else None
        environment, propagated = self.environment, Reason.PROPAGATED
        value_type = {"boolean": bool, "string": str}.get(getter)

        def getter_of(value_only: bool) -> Callable[..., Any]:
            # One body for get_<type> (value_only) and get_<type>_details: the request-scope
            # path is inlined, as a call per evaluation would cost more than the scope lookup.
            def get(key: str, default: Any, context: Context | None = None) -> Any:
                try:
                    entry = table[key]
                except KeyError:
                    d = slow(key, default, context, getter)
                    return d.value if value_only else d
                scope = None
                if hooks.active:
                    if hooks.extra:
                        d = slow(key, default, context, getter)
                        return d.value if value_only else d
                    scope = current_scope()
                    if scope is not None:
                        found = scope.evaluated.get(key)
                        if found is None and scope.upstream:
                            upstream = scope.upstream.get(key)
                            if upstream is not None and not (
                                scope.flag_set and environment and scope.flag_set != environment
                            ):
                                found = scope.evaluated[key] = upstream.details
                        if found is not None:
                            if found.reason is propagated and value_type not in (None, type(found.value)):
                                found = slow(key, default, context, getter)
                            return found.value if value_only else found
                if entry.__class__ is details_class:
                    d = entry  # a constant is never the caller's default (see __init__)
                else:
                    d = entry(empty if context is None else context, self)
                    if d.value is caller_default:
                        d = slow(key, default, context, getter)
                        return d.value if value_only else d
                if counts is not None:
                    counts[d.usage_slot] += 1
                if scope is not None and d.error_code is None:  # FlagScope.record, inlined
                    scope.evaluated[key] = d
                    if not scope.local_set:
                        scope.local_set = environment
                return d.value if value_only else d

            return get

        get_details, get_value = getter_of(False), getter_of(True)
        return get_details, get_value

    # -- typed getters (get_bool/str/object and their *_details are built in __init__) ------------

    def get_int_details(self, key: str, default: int, context: Context | None = None) -> EvaluationDetails:
        return self.details(key, default, context, "integer")

    def get_float_details(
        self, key: str, default: float, context: Context | None = None
    ) -> EvaluationDetails:
        details = self.details(key, default, context, "float")
        if type(details.value) is int:
            return replace(details, value=float(details.value))
        return details

    def get_int(self, key: str, default: int, context: Context | None = None) -> int:
        value: int = self.get_int_details(key, default, context).value
        return value

    def get_float(self, key: str, default: float, context: Context | None = None) -> float:
        value: float = self.get_float_details(key, default, context).value
        return value

    # -- tests and explanations ---------------------------------------------------

    def explain(self, key: str, context: Context | None = None) -> list[str]:
        """Human-readable steps: which rule matched and why."""
        from confmesh.flags.explain import explain_flag

        return explain_flag(self, key, context or {})

    def compiled(self, key: str) -> CompiledFlag | None:
        return self._compiled.get(key)

"""JsonLogic in flagd's dialect, compiled once into closures.

A flag's ``targeting`` is a JsonLogic expression (https://jsonlogic.com) with
flagd's operators (``fractional``, ``sem_ver``, ``starts_with``, ``ends_with``)
and ``$flagd.flagKey`` / ``$flagd.timestamp`` in the data. ``compile_logic``
turns it into a function ``data -> value`` at compile time: operators are
looked up, literal arguments folded, constant sets built, so evaluating walks
no JSON. Unknown operators, wrong arities and malformed literals are refused
here, with the path of the offending node (``LogicError``).

Semantics follow json-logic-js (JavaScript's truthiness, loose ``==``, numeric
comparison of mixed types) and flagd's providers for its own operators: an
operator given the wrong kind of argument yields null, so the flag serves its
default variant; nothing raises into an evaluation.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import mmh3
import semver

from confmesh.flags.budget import spend
from confmesh.flags.cbor import canonical_cbor

Fn = Callable[[Any], Any]
MAX_DEPTH = 64
MAX_NODES = 10_000
MAX_FRACTIONAL_WEIGHT = 2_147_483_647
LONG_TEXT = 4096  # a `cat` result longer than this spends a budget step per LONG_TEXT characters


class LogicError(ValueError):
    """A targeting expression that does not compile; `path` names the node."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


_MISSING = object()


# -- JavaScript's coercions ------------------------------------------------------------------------


def truthy(value: Any) -> bool:
    """JsonLogic's truthiness: false, null, 0, "" and [] are false; {} is true."""
    if value is None or value is False:
        return False
    if type(value) is dict:
        return True
    return bool(value)


def to_number(value: Any) -> float:
    """JavaScript's ToNumber (NaN where JS gives NaN)."""
    if type(value) is int or type(value) is float:
        return value
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if isinstance(value, str):
        return _string_to_number(value)
    if isinstance(value, list):
        if not value:
            return 0
        if len(value) == 1:
            return to_number(value[0])
    return math.nan


_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Infinity)")
_RADIX = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")


def _string_to_number(value: str) -> float:
    """JavaScript's StringToNumber: decimal, Infinity, 0x/0o/0b literals; "" is 0; else NaN.

    Python's float() would also take "inf", "nan" and "1_000", which JavaScript does not."""
    text = value.strip()
    if not text:
        return 0
    if _DECIMAL.fullmatch(text):
        return float(text.replace("Infinity", "inf"))
    if _RADIX.fullmatch(text):
        return float(int(text, 0))
    return math.nan


def to_string(value: Any) -> str:
    """JavaScript's String() for JSON values."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return ",".join("" if v is None else to_string(v) for v in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def loose_equals(a: Any, b: Any) -> bool:
    """JavaScript's ``==`` over JSON values."""
    if a is None or b is None:
        return a is None and b is None
    ta, tb = type(a), type(b)
    if ta is tb or (_is_number(a) and _is_number(b)):
        if ta is list or ta is dict:
            return a is b
        return bool(a == b)
    if ta is bool:
        return loose_equals(1 if a else 0, b)
    if tb is bool:
        return loose_equals(a, 1 if b else 0)
    if isinstance(a, (list, dict)):
        return loose_equals(to_string(a), b) if not isinstance(b, (list, dict)) else False
    if isinstance(b, (list, dict)):
        return loose_equals(a, to_string(b))
    return to_number(a) == to_number(b)


def strict_equals(a: Any, b: Any) -> bool:
    """JavaScript's ``===`` over JSON values (objects and arrays compare by identity)."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is bool or type(b) is bool:
        return a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, dict)):
        return a is b
    return bool(a == b)


def _less(a: Any, b: Any, or_equal: bool) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a <= b if or_equal else a < b
    x, y = to_number(a), to_number(b)
    return x <= y if or_equal else x < y


# -- flagd's operators -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def flagd_version(text: str) -> semver.Version | None:
    """A version as flagd reads it: a `v`/`V` prefix dropped, `1` and `1.2` padded to three parts."""
    version = text[1:] if text[:1] in ("v", "V") else text
    numeric = version.split("-")[0].split("+")[0]
    dots = numeric.count(".")
    if dots < 2:
        version = numeric + ".0" * (2 - dots) + version[len(numeric) :]
    try:
        return semver.Version.parse(version)
    except (ValueError, TypeError):
        return None


def _version_of(value: Any) -> semver.Version | None:
    if isinstance(value, (dict, list)) or value is None:
        return None
    text = to_python_str(value)
    return flagd_version(text)


def to_python_str(value: Any) -> str:
    """str() as flagd's Python provider applies it to a version or a variant name."""
    return "true" if value is True else "false" if value is False else str(value)


_SEMVER_OPS: dict[str, Callable[[semver.Version, semver.Version], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "^": lambda a, b: a.major == b.major,
    "~": lambda a, b: a.major == b.major and a.minor == b.minor,
}


def normalize_numbers(value: Any) -> Any:
    """Integral floats as integers (within 64 bits), as flagd hashes a bucketing value."""
    if isinstance(value, dict):
        return {k: normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize_numbers(v) for v in value]
    if type(value) is float and value.is_integer() and -(2**63) <= value <= 2**64 - 1:
        return int(value)
    return value


def fractional_hash(value: Any, cbor: bool = False) -> int | None:
    """The 32-bit hash a ``fractional`` buckets by; None when the value cannot be bucketed.

    v2 (``cbor=False``, flagd before CBOR bucketing): MurmurHash3_x86_32, seed 0, unsigned,
    of the UTF-8 string; only strings bucket. v3 (``cbor=True``, flagd-core >= 2.0): the
    same hash of the canonical CBOR of the value, integral floats read as integers.
    """
    if not cbor:
        return mmh3.hash(value, 0, False) if type(value) is str else None
    if type(value) is str:
        return mmh3.hash(canonical_cbor(value), 0, False)
    try:
        encoded = canonical_cbor(normalize_numbers(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return mmh3.hash(encoded, 0, False)


# -- the compiler ----------------------------------------------------------------------------------


class _Compiler:
    def __init__(
        self,
        flag_key: str,
        clock: Callable[[], float],
        extensions: Mapping[str, Extension],
        cbor_fractional: bool = False,
    ) -> None:
        self.flag_key = flag_key
        self.cbor_fractional = cbor_fractional
        self.clock = clock
        self.extensions = extensions
        self.nodes = 0

    def compile(self, expr: Any, path: str = "", depth: int = 0) -> tuple[Fn, Any]:
        """(function, constant): constant is the folded value, or _MISSING when data-dependent."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LogicError(path, f"the expression has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise LogicError(path, f"the expression nests deeper than {MAX_DEPTH}")
        if isinstance(expr, list):
            parts = [self.compile(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(expr)]
            if all(c is not _MISSING for _, c in parts):
                value = [c for _, c in parts]
                return (lambda d: value), value
            fns = [f for f, _ in parts]
            return (lambda d: [f(d) for f in fns]), _MISSING
        if isinstance(expr, dict):
            if len(expr) != 1:
                raise LogicError(
                    path, f"an operation is an object with exactly one key, got {len(expr)} keys"
                )
            ((op, raw),) = expr.items()
            here = f"{path}.{op}" if path else op
            if op in ("var", "missing", "missing_some"):
                return self._data_op(op, raw, here, depth)
            if op in ("map", "filter", "all", "none", "some", "reduce"):
                return self._array_op(op, raw, here, depth)
            args = raw if isinstance(raw, list) else [raw]
            extension = self.extensions.get(op)
            if extension is not None:
                return extension(self, args, here, depth), _MISSING
            if op in ("if", "?:"):
                return self._if(args, here, depth)
            if op in ("and", "or"):
                return self._and_or(op, args, here, depth)
            builder = _OPERATORS.get(op)
            if builder is None:
                raise LogicError(path, f"unknown operator {op!r}")
            parts = [self.compile(x, f"{here}[{i}]", depth + 1) for i, x in enumerate(args)]
            fn = builder(self, parts, here)
            return fn, _MISSING
        if expr is None or isinstance(expr, (str, int, float, bool)):
            return (lambda d: expr), expr
        raise LogicError(path, f"unsupported value {expr!r}")

    def _if(self, args: list[Any], path: str, depth: int) -> tuple[Fn, Any]:
        parts = [self.compile(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(args)]
        if not parts:
            return (lambda d: None), None
        if len(parts) == 1:
            return parts[0]
        pairs = [(parts[i][0], parts[i + 1][0]) for i in range(0, len(parts) - 1, 2)]
        otherwise = parts[-1][0] if len(parts) % 2 == 1 else (lambda d: None)
        if len(pairs) == 1:
            (cond, then), other = pairs[0], otherwise
            return (lambda d: then(d) if truthy(cond(d)) else other(d)), _MISSING

        def chain(d: Any) -> Any:
            for cond, then in pairs:
                if truthy(cond(d)):
                    return then(d)
            return otherwise(d)

        return chain, _MISSING

    def _and_or(self, op: str, args: list[Any], path: str, depth: int) -> tuple[Fn, Any]:
        if not args:
            raise LogicError(path, f"{op!r} needs at least one argument")
        fns = [self.compile(x, f"{path}[{i}]", depth + 1)[0] for i, x in enumerate(args)]
        if op == "and":

            def all_of(d: Any) -> Any:
                value: Any = None
                for f in fns:
                    value = f(d)
                    if not truthy(value):
                        return value
                return value

            return all_of, _MISSING

        def any_of(d: Any) -> Any:
            value: Any = None
            for f in fns:
                value = f(d)
                if truthy(value):
                    return value
            return value

        return any_of, _MISSING

    def _data_op(self, op: str, raw: Any, path: str, depth: int) -> tuple[Fn, Any]:
        if op == "var":
            args = raw if isinstance(raw, list) else [raw]
            if len(args) > 2:
                raise LogicError(path, "'var' takes a path and an optional default")
            name_fn, name = self.compile(args[0] if args else "", f"{path}[0]", depth + 1)
            default_fn = self.compile(args[1], f"{path}[1]", depth + 1)[0] if len(args) == 2 else _none
            if name is _MISSING:
                return (lambda d: _lookup(d, name_fn(d), default_fn)), _MISSING
            return self._var(name, default_fn, path), _MISSING
        args = raw if isinstance(raw, list) else [raw]
        parts = [self.compile(x, f"{path}[{i}]", depth + 1)[0] for i, x in enumerate(args)]
        if op == "missing":

            def missing(d: Any) -> list[Any]:
                names: list[Any] = []
                for f in parts:
                    value = f(d)
                    names.extend(value if isinstance(value, list) else [value])
                return [n for n in names if _lookup(d, n, None) in (None, "")]

            return missing, _MISSING
        if len(parts) != 2:
            raise LogicError(path, "'missing_some' takes a minimum and a list of paths")
        need_fn, names_fn = parts

        def missing_some(d: Any) -> list[Any]:
            names = names_fn(d)
            names = names if isinstance(names, list) else [names]
            absent = [n for n in names if _lookup(d, n, None) in (None, "")]
            return [] if len(names) - len(absent) >= to_number(need_fn(d)) else absent

        return missing_some, _MISSING

    def _var(self, name: Any, default_fn: Fn, path: str) -> Fn:
        if name is None or name == "" or name == []:
            return lambda d: d
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise LogicError(path, f"'var' takes a string path, got {name!r}")
        text = to_string(name)
        if text == "$flagd" or text.startswith("$flagd."):
            return self._flagd_var(text, default_fn, path)
        keys = tuple(text.split("."))
        if len(keys) == 1:
            (key,) = keys

            def var1(d: Any) -> Any:
                try:
                    return d[key]
                except (KeyError, TypeError, IndexError):
                    return _lookup(d, key, default_fn)

            return var1
        if len(keys) == 2:
            outer, inner = keys

            def var2(d: Any) -> Any:
                try:
                    value = d[outer][inner]
                except (KeyError, TypeError, IndexError):
                    return _lookup(d, text, default_fn)
                return value

            return var2
        return lambda d: _lookup(d, text, default_fn)

    def _flagd_var(self, text: str, default_fn: Fn, path: str) -> Fn:
        flag_key, clock = self.flag_key, self.clock
        if text == "$flagd.flagKey":
            return lambda d: flag_key
        if text == "$flagd.timestamp":
            return lambda d: int(clock())
        if text == "$flagd":
            return lambda d: {"flagKey": flag_key, "timestamp": int(clock())}
        return default_fn

    def _array_op(self, op: str, raw: Any, path: str, depth: int) -> tuple[Fn, Any]:
        args = raw if isinstance(raw, list) else [raw]
        wanted = 3 if op == "reduce" else 2
        if len(args) not in ((2, 3) if op == "reduce" else (2,)):
            raise LogicError(path, f"{op!r} takes {wanted} arguments")
        source = self.compile(args[0], f"{path}[0]", depth + 1)[0]
        body = self.compile(args[1], f"{path}[1]", depth + 1)[0]

        def items(d: Any) -> list[Any]:
            value = source(d)
            if not isinstance(value, list):
                return []
            spend(len(value))
            return value

        if op == "map":
            return (lambda d: [body(x) for x in items(d)]), _MISSING
        if op == "filter":
            return (lambda d: [x for x in items(d) if truthy(body(x))]), _MISSING
        if op == "all":

            def every(d: Any) -> bool:
                values = items(d)
                return bool(values) and all(truthy(body(x)) for x in values)

            return every, _MISSING
        if op == "none":
            return (lambda d: not any(truthy(body(x)) for x in items(d))), _MISSING
        if op == "some":
            return (lambda d: any(truthy(body(x)) for x in items(d))), _MISSING
        initial = self.compile(args[2] if len(args) == 3 else None, f"{path}[2]", depth + 1)[0]

        def reduce(d: Any) -> Any:
            acc = initial(d)
            for x in items(d):
                acc = body({"current": x, "accumulator": acc})
            return acc

        return reduce, _MISSING


def _none(d: Any) -> None:
    return None


def _lookup(data: Any, name: Any, default_fn: Fn | None) -> Any:
    """json-logic-js's var: walk a dotted path through objects and arrays."""
    if name is None or name == "":
        return data
    value = data
    for part in to_string(name).split("."):
        if value is None:
            return default_fn(data) if default_fn else None
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list | str) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = _MISSING
        if value is _MISSING:
            return default_fn(data) if default_fn else None
    return value


Parts = list[tuple[Fn, Any]]
Builder = Callable[[_Compiler, Parts, str], Fn]
Extension = Callable[[_Compiler, list[Any], str, int], Fn]


def _arity(parts: Parts, path: str, low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(parts) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise LogicError(path, f"takes {wanted} arguments, got {len(parts)}")


def _equality(positive: bool, strict: bool) -> Builder:
    def build(c: _Compiler, parts: Parts, path: str) -> Fn:
        _arity(parts, path, 1, 2)
        (a, _), (b, bc) = parts[0], (parts[1] if len(parts) == 2 else ((lambda d: None), None))
        if type(bc) is str and not strict:
            # The common case: an attribute against a string literal.
            def eq_str(d: Any) -> bool:
                v = a(d)
                if type(v) is str:
                    return (v == bc) is positive
                return loose_equals(v, bc) is positive

            return eq_str
        test = strict_equals if strict else loose_equals
        if positive:
            return lambda d: test(a(d), b(d))
        return lambda d: not test(a(d), b(d))

    return build


def _comparison(or_equal: bool, greater: bool) -> Builder:
    def build(c: _Compiler, parts: Parts, path: str) -> Fn:
        if greater:
            _arity(parts, path, 2)
            a, b = parts[0][0], parts[1][0]
            return lambda d: _less(b(d), a(d), or_equal)
        _arity(parts, path, 2, 3)
        if len(parts) == 3:
            lo, mid, hi = (p[0] for p in parts)
            return lambda d: _less(lo(d), (m := mid(d)), or_equal) and _less(m, hi(d), or_equal)
        a, b = parts[0][0], parts[1][0]
        return lambda d: _less(a(d), b(d), or_equal)

    return build


def _not(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 1)
    f = parts[0][0]
    return lambda d: not truthy(f(d))


def _not_not(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 1)
    f = parts[0][0]
    return lambda d: truthy(f(d))


def _js_number(value: float) -> float:
    """Arithmetic results as JSON numbers: integral results as ints, NaN/inf as null."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None  # type: ignore[return-value]
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def _plus(c: _Compiler, parts: Parts, path: str) -> Fn:
    fns = [p[0] for p in parts]
    return lambda d: _js_number(math.fsum(to_number(f(d)) for f in fns)) if fns else 0


def _times(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 1, 1000)
    fns = [p[0] for p in parts]

    def product(d: Any) -> Any:
        out: float = 1
        for f in fns:
            out *= to_number(f(d))
        return _js_number(out)

    return product


def _minus(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 1, 2)
    if len(parts) == 1:
        f = parts[0][0]
        return lambda d: _js_number(-to_number(f(d)))
    a, b = parts[0][0], parts[1][0]
    return lambda d: _js_number(to_number(a(d)) - to_number(b(d)))


def _divide(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 2)
    a, b = parts[0][0], parts[1][0]

    def divide(d: Any) -> Any:
        x, y = to_number(a(d)), to_number(b(d))
        if y == 0:
            return None
        return _js_number(x / y)

    return divide


def _modulo(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 2)
    a, b = parts[0][0], parts[1][0]

    def modulo(d: Any) -> Any:
        x, y = to_number(a(d)), to_number(b(d))
        if y == 0 or math.isnan(x) or math.isnan(y):
            return None
        return _js_number(math.fmod(x, y))

    return modulo


def _extreme(pick: Callable[[list[float]], float]) -> Builder:
    def build(c: _Compiler, parts: Parts, path: str) -> Fn:
        fns = [p[0] for p in parts]

        def extreme(d: Any) -> Any:
            values = [to_number(f(d)) for f in fns]
            if not values or any(math.isnan(v) for v in values):
                return None
            return _js_number(pick(values))

        return extreme

    return build


def _cat(c: _Compiler, parts: Parts, path: str) -> Fn:
    fns = [p[0] for p in parts]
    if len(fns) == 2:
        a, b = fns

        def cat2(d: Any) -> str:
            x, y = a(d), b(d)
            out = x + y if type(x) is str and type(y) is str else to_string(x) + to_string(y)
            if len(out) > LONG_TEXT:
                spend(len(out) // LONG_TEXT)
            return out

        return cat2

    def cat(d: Any) -> str:
        out = "".join(to_string(f(d)) for f in fns)
        if len(out) > LONG_TEXT:
            spend(len(out) // LONG_TEXT)
        return out

    return cat


def _substr(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 2, 3)
    text = parts[0][0]
    start = parts[1][0]
    length = parts[2][0] if len(parts) == 3 else None

    def substr(d: Any) -> str:
        s = to_string(text(d))
        begin = _to_integer(start(d))
        begin = max(len(s) + begin, 0) if begin < 0 else begin
        if length is None:
            return s[begin:]
        n = _to_integer(length(d))
        return s[begin : len(s) + n] if n < 0 else s[begin : begin + n]

    return substr


def _to_integer(value: Any) -> int:
    """JavaScript's ToIntegerOrInfinity, clamped to a safe range (NaN is 0)."""
    n = to_number(value)
    if math.isnan(n):
        return 0
    return int(max(-(2**53), min(2**53, n)))


def _in(c: _Compiler, parts: Parts, path: str) -> Fn:
    _arity(parts, path, 2)
    (needle, _), (haystack, constant) = parts
    if isinstance(constant, list) and all(type(x) is str for x in constant):
        strings = frozenset(constant)
        return lambda d: type(v := needle(d)) is str and v in strings

    def contains(d: Any) -> bool:
        value, where = needle(d), haystack(d)
        if isinstance(where, str):
            return to_string(value) in where
        if isinstance(where, list):
            spend(len(where))
            return any(strict_equals(value, x) for x in where)
        return False

    return contains


def _merge(c: _Compiler, parts: Parts, path: str) -> Fn:
    fns = [p[0] for p in parts]

    def merge(d: Any) -> list[Any]:
        out: list[Any] = []
        for f in fns:
            value = f(d)
            out.extend(value if isinstance(value, list) else [value])
        if len(out) > 64:
            spend(len(out))  # a reduce that merges its accumulator with itself doubles it each step
        return out

    return merge


def _string_test(test: Callable[[str, str], bool]) -> Builder:
    """flagd's starts_with / ends_with: null (not false) unless both arguments are strings."""

    def build(c: _Compiler, parts: Parts, path: str) -> Fn:
        if len(parts) != 2:
            return _null  # flagd: a malformed call is null, so the default variant
        (a, _), (b, bc) = parts
        if type(bc) is str:
            return lambda d: test(v, bc) if type(v := a(d)) is str else None
        return lambda d: test(x, y) if type(x := a(d)) is str and type(y := b(d)) is str else None

    return build


def _sem_ver(c: _Compiler, parts: Parts, path: str) -> Fn:
    """flagd's sem_ver: null for a malformed call or version, or an unknown operator."""
    if len(parts) != 3:
        return _null
    (a, _), (op_fn, op), (b, bc) = parts
    if isinstance(op, str) and op not in _SEMVER_OPS:
        return lambda d: None
    if op is not _MISSING and bc is not _MISSING:
        compare = _SEMVER_OPS[op]
        bound = _version_of(bc)
        if bound is None:
            return lambda d: None

        def sem_ver_const(d: Any) -> bool | None:
            version = _version_of(a(d))
            return None if version is None else compare(version, bound)

        return sem_ver_const

    def sem_ver(d: Any) -> bool | None:
        test = _SEMVER_OPS.get(op_fn(d))
        left, right = _version_of(a(d)), _version_of(b(d))
        if test is None or left is None or right is None:
            return None
        return test(left, right)

    return sem_ver


def _fractional(c: _Compiler, parts: Parts, path: str) -> Fn:
    """flagd's fractional: buckets by (hash * totalWeight) >> 32; null when it cannot bucket."""
    if not parts:
        raise LogicError(path, "'fractional' needs at least one bucket")
    first_fn, first = parts[0]
    flag_key, cbor = c.flag_key, c.cbor_fractional
    if isinstance(first, list):
        # Shorthand: every argument is a bucket; the value bucketed is [flagKey, targetingKey].
        key_fn: Fn | None = None
        buckets = parts
    else:
        key_fn = first_fn
        buckets = parts[1:]
    if not buckets:
        raise LogicError(path, "'fractional' needs at least one bucket")
    for i, (_, const) in enumerate(buckets):
        if const is not _MISSING and (
            not isinstance(const, list)
            or not 1 <= len(const) <= 2
            or (len(const) == 2 and not _weight_ok(const[1]))
        ):
            raise LogicError(
                f"{path}[{i + (key_fn is not None)}]", "a bucket is [variant] or [variant, integer weight]"
            )
    static = [const for _, const in buckets]
    if all(b is not _MISSING for b in static):
        names = [b[0] for b in static]
        weights = [max(0, b[1]) if len(b) == 2 else 1 for b in static]
        total = sum(weights)
        if total <= 0 or total > MAX_FRACTIONAL_WEIGHT:
            return lambda d: None
        cuts: list[tuple[int, Any]] = []
        running = 0
        for name, weight in zip(names, weights, strict=True):
            running += weight
            cuts.append((running, name))
        if len(cuts) == 1:
            only = cuts[0][1]
            return lambda d: None if _bucket_value(d, key_fn, flag_key, cbor) is None else only

        def fractional_static(d: Any) -> Any:
            value = _bucket_value(d, key_fn, flag_key, cbor)
            if value is None:
                return None
            h = fractional_hash(value, cbor)
            if h is None:
                return None
            bucket = (h * total) >> 32
            for cut, name in cuts:
                if bucket < cut:
                    return name
            return None

        return fractional_static
    bucket_fns = [f for f, _ in buckets]

    def fractional(d: Any) -> Any:
        value = _bucket_value(d, key_fn, flag_key, cbor)
        if value is None:
            return None
        chosen: list[tuple[Any, int]] = []
        for f in bucket_fns:
            b = f(d)
            if not isinstance(b, list) or not 1 <= len(b) <= 2:
                return None
            if len(b) == 2 and not _weight_ok(b[1]):
                return None
            chosen.append((b[0], max(0, b[1]) if len(b) == 2 else 1))
        total = sum(w for _, w in chosen)
        if total <= 0 or total > MAX_FRACTIONAL_WEIGHT:
            return None
        h = fractional_hash(value, cbor)
        if h is None:
            return None
        bucket = (h * total) >> 32
        running = 0
        for name, weight in chosen:
            running += weight
            if bucket < running:
                return name
        return None

    return fractional


def _null(d: Any) -> None:
    return None


def _weight_ok(weight: Any) -> bool:
    return type(weight) is int


def _bucket_value(d: Any, key_fn: Fn | None, flag_key: str, cbor: bool) -> Any:
    if key_fn is not None:
        return key_fn(d)
    try:
        targeting_key = d["targetingKey"]
    except (KeyError, TypeError):
        return None
    if type(targeting_key) is not str or not targeting_key:
        return None
    return [flag_key, targeting_key] if cbor else flag_key + targeting_key


_OPERATORS: dict[str, Builder] = {
    "==": _equality(True, False),
    "!=": _equality(False, False),
    "===": _equality(True, True),
    "!==": _equality(False, True),
    "!": _not,
    "!!": _not_not,
    "<": _comparison(False, False),
    "<=": _comparison(True, False),
    ">": _comparison(False, True),
    ">=": _comparison(True, True),
    "+": _plus,
    "-": _minus,
    "*": _times,
    "/": _divide,
    "%": _modulo,
    "min": _extreme(min),
    "max": _extreme(max),
    "cat": _cat,
    "substr": _substr,
    "in": _in,
    "merge": _merge,
    "starts_with": _string_test(str.startswith),
    "ends_with": _string_test(str.endswith),
    "sem_ver": _sem_ver,
    "fractional": _fractional,
}
OPERATORS = frozenset(_OPERATORS) | {
    "if", "?:", "and", "or", "var", "missing", "missing_some",
    "map", "filter", "all", "none", "some", "reduce",
}  # fmt: skip


def compile_logic(
    expr: Any,
    *,
    flag_key: str = "",
    clock: Callable[[], float] | None = None,
    extensions: Mapping[str, Extension] | None = None,
    cbor_fractional: bool = False,
) -> Fn:
    """Compile a JsonLogic expression; raises LogicError naming the node that does not compile."""
    import time

    compiler = _Compiler(flag_key, clock or time.time, extensions or {}, cbor_fractional)
    fn, constant = compiler.compile(expr)
    if constant is not _MISSING:
        return lambda d: constant
    return fn

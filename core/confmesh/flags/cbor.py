"""Canonical CBOR (RFC 7049 §3.9) of JSON values: what flagd's fractional operator hashes.

Integers and lengths take their shortest argument; integers beyond 64 bits are
bignums (tags 2 and 3); floats take the shortest of half, single and double
precision that keeps the value; map keys sort by the length of their encoding,
then by its bytes. These are the choices cbor2's ``canonical=True`` makes (a
property test checks the two agree); the encoder is ours so that a client does
not need cbor2 to bucket users.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")


def _int(value: int) -> bytes:
    major, n = (0, value) if value >= 0 else (1, -1 - value)
    if n < 2**64:
        return _head(major, n)
    payload = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return _head(6, 2 + major) + _head(2, len(payload)) + payload


def _float(value: float) -> bytes:
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    if math.isinf(value):
        return b"\xf9\x7c\x00" if value > 0 else b"\xf9\xfc\x00"
    encoded = struct.pack(">Bd", 0xFB, value)
    for fmt, tag in ((">Bf", 0xFA), (">Be", 0xF9)):
        try:
            smaller = struct.pack(fmt, tag, value)
        except OverflowError:
            break
        if struct.unpack(fmt, smaller)[1] != value:
            break
        encoded = smaller
    return encoded


def canonical_cbor(value: Any) -> bytes:
    """The canonical CBOR encoding of a JSON value (str, int, float, bool, None, list, dict)."""
    if type(value) is str:
        raw = value.encode()
        return _head(3, len(raw)) + raw
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return canonical_cbor(str(value))
    if isinstance(value, (list, tuple)):
        return _head(4, len(value)) + b"".join(canonical_cbor(v) for v in value)
    if isinstance(value, Mapping):
        entries = sorted((canonical_cbor(k), canonical_cbor(v)) for k, v in value.items())
        entries.sort(key=lambda kv: len(kv[0]))
        return _head(5, len(entries)) + b"".join(k + v for k, v in entries)
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")

"""Deterministic, language-neutral bucketing into 10,000 buckets.

murmur3 (the default):
    h = MurmurHash3_x86_32(utf8(salt + flagKey + value), seed=0), read as unsigned
    bucket = (h * 10000) >> 32                  integer maths only
where ``salt`` is the flag's salt ("" by default: a new salt reshuffles a
flag's users on purpose). With no salt this is flagd's fractional scheme
(murmur3, integer weights, ``flagKey + targetingKey``) over the plain UTF-8
string; flagd-core >= 2.0 hashes the CBOR encoding instead, so buckets are
not identical to current flagd.

legacy-md5 (flags imported from the classic JSON format keep their users):
    n = int(md5(utf8(value + flagName)).hexdigest()[:8], 16) % 100
    bucket = n * 100

A split or ramp with the "on" range first serves "on" to ``bucket < bps``,
so raising a percentage only ever adds users.
"""

from __future__ import annotations

import hashlib

import mmh3

BUCKETS = 10_000


def murmur3_bucket(salt: str, flag_key: str, value: str) -> int:
    return (mmh3.hash(salt + flag_key + value, 0, False) * BUCKETS) >> 32


def legacy_md5_bucket(flag_name: str, value: str) -> int:
    digest = hashlib.md5((value + flag_name).encode(), usedforsecurity=False).hexdigest()
    return (int(digest[:8], 16) % 100) * 100

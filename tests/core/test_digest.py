"""The snapshot hash schemes: RFC 8785 leaves, the committed vectors, scheme choice."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from confmesh.delta import CONFIG, FLAGS, MISSING, Update, apply_updates
from confmesh.digest import (
    JCS,
    LEAFSUM,
    format_hash,
    jcs_bytes,
    matches,
    pick_scheme,
    scheme_of,
    snapshot_digest,
    snapshot_hash,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "data" / "hash_vectors.json").read_text(encoding="utf-8"))

keys = st.text(st.characters(codec="utf-8"), max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=10)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _doubles(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | dict | list):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _doubles(v) for k, v in value.items()}
    return [_doubles(v) for v in value]


@given(st.lists(keys, min_size=1, max_size=3), values)
def test_the_fast_path_is_rfc8785(path: list[str], value: Any) -> None:
    """Strings, integers, booleans and null skip rfc8785; the bytes are the same as through it."""
    expected = rfc8785.dumps(_doubles([CONFIG, *path, value]))
    assert jcs_bytes([CONFIG, *path, value]) == expected


@pytest.mark.parametrize(
    ("number", "text"),
    [(1e16, "10000000000000000"), (9.5e15, "9500000000000000"), (1e-05, "0.00001"), (1e-7, "1e-7"),
     (1e21, "1e+21"), (2**53, "9007199254740992"), (0.1 + 0.2, "0.30000000000000004")],
)  # fmt: skip
def test_numbers_print_as_ecmascript_does(number: float, text: str) -> None:
    assert jcs_bytes([CONFIG, "n", number]) == f'["config","n",{text}]'.encode()


def test_object_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 is the surrogate pair D83D DE00, which sorts before U+FFFF in UTF-16 but after it by code point.
    assert (
        jcs_bytes([CONFIG, "v", [{"\uffff": 1, "\U0001f600": 2}]]).decode()
        == '["config","v",[{"😀":2,"\uffff":1}]]'
    )


@pytest.mark.parametrize("case", VECTORS["leaves"], ids=lambda c: c["canonical"][:40])
def test_leaf_vectors(case: dict[str, Any]) -> None:
    canonical = jcs_bytes([case["section"], *case["path"], case["value"]])
    assert canonical.decode() == case["canonical"]
    assert hashlib.sha256(canonical).hexdigest() == case["sha256"]


@pytest.mark.parametrize("case", VECTORS["snapshots"])
def test_snapshot_vectors(case: dict[str, Any]) -> None:
    assert snapshot_hash(case["config"], case["flags"]) == case["hash"]
    total = sum(int(leaf["sha256"], 16) for leaf in case["leaves"]) % (1 << 256)
    assert format_hash(total) == case["hash"]


@pytest.mark.parametrize("case", VECTORS["deltas"])
def test_delta_vectors(case: dict[str, Any]) -> None:
    base = case["base"]
    updates = [Update(u["section"], tuple(u["path"]), u.get("value", MISSING)) for u in case["updates"]]
    config, flags, digest = apply_updates(
        base["config"], base["flags"], snapshot_digest(base["config"], base["flags"]), updates
    )
    assert format_hash(digest) == case["hash"] == snapshot_hash(config, flags)


def test_the_committed_vectors_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_hash_vectors.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@given(
    st.dictionaries(keys, values, max_size=4),
    st.dictionaries(keys, values, max_size=3),
    st.sampled_from([JCS, LEAFSUM]),
)
def test_a_patched_digest_equals_the_whole_in_both_schemes(
    config: dict[str, Any], change: dict[str, Any], scheme: str
) -> None:
    updates = [Update(CONFIG, (k,), v) for k, v in change.items()] + [Update(FLAGS, ("f",), {"on": True})]
    new_config, new_flags, digest = apply_updates(
        config, {}, snapshot_digest(config, {}, scheme), updates, scheme
    )
    assert digest == snapshot_digest(new_config, new_flags, scheme)
    assert matches(format_hash(digest, scheme), new_config, new_flags)


def test_the_two_schemes_differ_where_python_prints_numbers_its_own_way() -> None:
    doc = {"sample_rate": 0.00001}
    assert snapshot_hash(doc, {}, JCS) != snapshot_hash(doc, {}, LEAFSUM).replace(LEAFSUM, JCS)
    # Where both print alike, only the prefix differs.
    plain = {"host": "db", "max": 5}
    assert snapshot_hash(plain, {}, JCS).split(":")[1] == snapshot_hash(plain, {}, LEAFSUM).split(":")[1]


def test_scheme_names() -> None:
    assert scheme_of(snapshot_hash({}, {})) == JCS
    assert scheme_of(snapshot_hash({}, {}, LEAFSUM)) == LEAFSUM
    for bad in ("", "jcs-leafsum256:", "md5:" + "0" * 64, "leafsum256:abc", "jcs-leafsum256" + "0" * 64):
        assert scheme_of(bad) is None
        assert not matches(bad, {}, {})
    assert pick_scheme([]) == LEAFSUM  # a client from before the field
    assert pick_scheme(["sha3-tree", JCS, LEAFSUM]) == JCS
    assert pick_scheme([LEAFSUM, JCS]) == LEAFSUM  # the client's preference wins
    assert pick_scheme(["sha3-tree"]) is None

"""Write tests/data/hash_vectors.json: leaf -> RFC 8785 bytes -> SHA-256, and snapshot -> hash.

Clients in other languages check their jcs-leafsum256 implementation against
this file (examples/node does, in CI); the Python tests check that it still
matches the code. Regenerate with ``python scripts/gen_hash_vectors.py``;
``--check`` exits 1 when the committed file is stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from confmesh.delta import CONFIG, FLAGS, MISSING, Update, apply_updates
from confmesh.digest import JCS, jcs_bytes, snapshot_digest, snapshot_hash

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "hash_vectors.json"

# Numbers whose shortest form differs between languages' default printers.
NUMBERS: list[int | float] = [
    0, -1, 100, 1.5, -0.5, 0.1, 0.30000000000000004, 1e-6, 1e-05, 1e-7, 4.35, 333333333.3333333,
    9.5e15, 1e16, 2**53, -(2**53), 9007199254740991, 1.2345678901234568e20, 1e21, 1e22, 1.5e300,
    1.7976931348623157e308, 5e-324, 2.2250738585072014e-308, 123.456e-10,
]  # fmt: skip

STRINGS = [
    "", "plain", "quote \" and backslash \\", "controls \u0000\u0001\b\t\n\f\r\u001f", "del \u007f",
    "é ü ß", "日本語", "emoji \U0001f600", "separators \u2028\u2029", "slash / stays",
]  # fmt: skip

OTHERS: list[Any] = [
    None, True, False, {}, [], [1, "two", None, [3.5e-7]],
    [{"b": 1, "a": 2}, {"\U0001f600": "non-BMP", "\uffff": "last BMP", "a": "ascii", "é": "latin"}],
    [{"z": {"y": [], "x": {}}, "10": 1, "9": 2, "A": 3, "a": 4}],
]  # fmt: skip

PATHS = [["sample_rate"], ["database", "pool", "max"], ["\U0001f600", "ключ"], ["a.b"], [""]]


def leaf_case(section: str, path: list[str], value: Any) -> dict[str, Any]:
    canonical = jcs_bytes([section, *path, value])
    return {
        "section": section,
        "path": path,
        "value": value,
        "canonical": canonical.decode(),
        "sha256": hashlib.sha256(canonical).hexdigest(),
    }


def leaf_cases() -> list[dict[str, Any]]:
    cases = [leaf_case(CONFIG, ["n"], v) for v in NUMBERS]
    cases += [leaf_case(CONFIG, ["s"], v) for v in STRINGS]
    cases += [leaf_case(CONFIG, ["v"], v) for v in OTHERS]
    cases += [leaf_case(section, p, 1) for section in (CONFIG, FLAGS) for p in PATHS]
    return cases


FLAG = {
    "variants": {"on": True, "off": False, "ratio": 0.00001},
    "default_variant": "off",
    "rules": [{"id": "beta", "clauses": [{"attribute": "tier", "op": "in", "values": ["beta"]}],
               "serve": {"variant": "on"}}],
}  # fmt: skip

SNAPSHOTS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {}),
    ({"database": {"host": "db", "pool": {"max": 50}}}, {}),
    ({"sample_rate": 0.00001, "big": 1e16, "huge": 1e21, "tiny": 1e-7, "empty": {}, "list": []}, {}),
    ({"\U0001f600": {"\uffff": 1, "a": [{"\U0001f600": 1, "\uffff": 2}]}}, {"checkout": FLAG}),
]


def snapshot_case(config: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    leaves: list[dict[str, Any]] = []

    def walk(section: str, path: list[str], value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(section, [*path, key], child)
        else:
            leaves.append(leaf_case(section, path, value))

    for section, doc in ((CONFIG, config), (FLAGS, flags)):
        for key, value in doc.items():
            walk(section, [key], value)
    return {"config": config, "flags": flags, "leaves": leaves, "hash": snapshot_hash(config, flags)}


def delta_case(config: dict[str, Any], flags: dict[str, Any], updates: list[Update]) -> dict[str, Any]:
    digest = snapshot_digest(config, flags)
    _, _, new_digest = apply_updates(config, flags, digest, updates)
    return {
        "base": {"config": config, "flags": flags, "hash": snapshot_hash(config, flags)},
        "updates": [
            {"section": u.section, "path": list(u.path)} | ({} if u.value is MISSING else {"value": u.value})
            for u in updates
        ],
        "hash": f"{JCS}:{new_digest:064x}",
    }


def delta_cases() -> list[dict[str, Any]]:
    config, flags = SNAPSHOTS[3]
    return [
        delta_case(config, flags, [Update(CONFIG, ("\U0001f600", "a"), 0.1)]),
        delta_case(config, flags, [Update(FLAGS, ("checkout",), MISSING), Update(CONFIG, ("x", "y"), {})]),
        delta_case(
            SNAPSHOTS[1][0],
            {},
            [
                Update(CONFIG, ("database", "pool", "max"), MISSING),
                Update(CONFIG, ("database", "host"), MISSING),
            ],
        ),
        # Setting below a leaf (a number, a list, an empty object) replaces that leaf with an object.
        delta_case(
            {"n": 5, "l": [1, 2], "e": {}, "keep": "x"},
            {},
            [
                Update(CONFIG, ("n", "a"), 1),
                Update(CONFIG, ("l", "b", "c"), True),
                Update(CONFIG, ("e", "d"), "y"),
            ],
        ),
    ]


def vectors() -> dict[str, Any]:
    return {
        "about": "jcs-leafsum256 test vectors; docs/watch-protocol.md says how each figure is made. "
        "Generated by scripts/gen_hash_vectors.py.",
        "scheme": JCS,
        "leaves": leaf_cases(),
        "snapshots": [snapshot_case(c, f) for c, f in SNAPSHOTS],
        "deltas": delta_cases(),
    }


def render() -> str:
    return json.dumps(vectors(), ensure_ascii=False, indent=1) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print("tests/data/hash_vectors.json is stale: run python scripts/gen_hash_vectors.py")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

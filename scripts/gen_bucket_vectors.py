"""Write tests/data/bucketing_vectors.json: context -> bucket -> variant.

Other-language SDKs check their bucketing against this file; the Python test
suite checks that it still matches (so the file can never drift silently).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from confmesh.flags import FlagEvaluator
from confmesh.flags.bucketing import legacy_md5_bucket, murmur3_bucket

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "bucketing_vectors.json"

FLAGS: dict[str, Any] = {
    "checkout-split": {
        "key": "checkout-split", "variants": {"on": True, "off": False}, "default_variant": "off",
        "rules": [{"id": "all", "serve": {"split": [{"variant": "on", "percent": 25},
                                                   {"variant": "off", "percent": 75}]}}],
    },
    "three-way": {
        "key": "three-way", "salt": "exp-2026", "variants": {"a": "A", "b": "B", "c": "C"},
        "default_variant": "a", "bucket_by": "orgId",
        "rules": [{"serve": {"split": [{"variant": "a", "percent": 33.33}, {"variant": "b", "percent": 33.33},
                                       {"variant": "c", "percent": 33.34}]}}],
    },
    "newCheckoutFlow": {
        "key": "newCheckoutFlow", "bucketing": "legacy-md5", "variants": {"on": True, "off": False},
        "default_variant": "off",
        "rules": [{"serve": {"split": [{"variant": "on", "percent": 25},
                                       {"variant": "off", "percent": 75}]}}],
    },
}  # fmt: skip

CONTEXTS = [
    {"targetingKey": "user-1"}, {"targetingKey": "user-2"}, {"targetingKey": "user-42"},
    {"targetingKey": "ümlaut-ユーザー"}, {"targetingKey": ""}, {"userId": "u-77"}, {"sessionId": "s-9"},
    {"targetingKey": "user-1", "orgId": "acme"}, {"orgId": "globex"}, {"orgId": "initech"}, {},
]  # fmt: skip


def build() -> dict[str, Any]:
    ev = FlagEvaluator(FLAGS)
    vectors = []
    for key, flag in FLAGS.items():
        for ctx in CONTEXTS:
            by = flag.get("bucket_by")
            value = (
                ctx.get(by)
                if by
                else next((ctx[k] for k in ("targetingKey", "userId", "sessionId") if ctx.get(k)), None)
            )
            bucket = None
            if value:
                bucket = (
                    legacy_md5_bucket(key, value)
                    if flag.get("bucketing") == "legacy-md5"
                    else murmur3_bucket(flag.get("salt", ""), key, value)
                )
            details = (
                ev.get_object_details(key, None, ctx)
                if isinstance(next(iter(flag["variants"].values())), dict)
                else ev.details(
                    key,
                    None,
                    ctx,
                    {bool: "boolean", str: "string"}[type(next(iter(flag["variants"].values())))],
                )
            )
            vectors.append(
                {
                    "flag": key,
                    "context": ctx,
                    "bucket_value": value,
                    "bucket": bucket,
                    "variant": details.variant,
                    "reason": str(details.reason),
                    "error_code": str(details.error_code) if details.error_code else None,
                }
            )
    return {
        "description": "confmesh bucketing test vectors; see confmesh.flags.bucketing for the algorithms",
        "buckets": 10000,
        "flags": FLAGS,
        "vectors": vectors,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")

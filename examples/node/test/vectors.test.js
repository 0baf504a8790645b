// The hash and bucketing against the language-neutral vectors the Python suite also checks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import { formatHash, leafBytes, snapshotDigest } from "../src/hash.js";
import { applyUpdates } from "../src/documents.js";
import { Flags, murmur3Bucket } from "../src/flags.js";

const data = (name) => JSON.parse(fs.readFileSync(new URL(`../../../tests/data/${name}`, import.meta.url), "utf8"));
const hashes = data("hash_vectors.json");
const buckets = data("bucketing_vectors.json");

test("leaves: canonical bytes and SHA-256", () => {
  for (const c of hashes.leaves) {
    const bytes = leafBytes(c.section, c.path, c.value);
    assert.equal(bytes.toString("utf8"), c.canonical);
    assert.equal(createHash("sha256").update(bytes).digest("hex"), c.sha256);
  }
});

test("snapshots: the hash", () => {
  for (const c of hashes.snapshots) assert.equal(formatHash(snapshotDigest(c.config, c.flags)), c.hash);
});

// A Struct Value as proto-loader decodes one (oneofs: true), for PathUpdate.value.
function toValue(v) {
  if (v === null) return { kind: "nullValue", nullValue: "NULL_VALUE" };
  if (typeof v === "number") return { kind: "numberValue", numberValue: v };
  if (typeof v === "string") return { kind: "stringValue", stringValue: v };
  if (typeof v === "boolean") return { kind: "boolValue", boolValue: v };
  if (Array.isArray(v)) return { kind: "listValue", listValue: { values: v.map(toValue) } };
  return { kind: "structValue", structValue: { fields: Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toValue(x)])) } };
}

test("deltas: the patched hash", () => {
  for (const c of hashes.deltas) {
    const base = { config: c.base.config, flags: c.base.flags };
    const updates = c.updates.map((u) => ({ section: u.section === "config" ? "CONFIG" : "FLAGS", path: u.path,
                                            value: "value" in u ? toValue(u.value) : undefined }));
    const { docs, digest } = applyUpdates(base, snapshotDigest(base.config, base.flags), updates);
    assert.equal(formatHash(digest), c.hash);
    assert.equal(formatHash(snapshotDigest(docs.config, docs.flags)), c.hash);
  }
});

test("bucketing and split variants", () => {
  const flags = new Flags(buckets.flags);
  let checked = 0;
  for (const c of buckets.vectors) {
    const flag = buckets.flags[c.flag];
    if (flag.bucketing && flag.bucketing !== "murmur3") continue;
    if (c.bucket_value !== null && c.bucket !== null) {
      assert.equal(murmur3Bucket(flag.salt || "", flag.key, c.bucket_value), c.bucket, JSON.stringify(c));
    }
    const got = flags.evaluate(c.flag, null, c.context);
    assert.equal(got.variant, c.variant, JSON.stringify(c));
    assert.equal(got.reason, c.reason, JSON.stringify(c));
    checked++;
  }
  assert.ok(checked > 10);
});

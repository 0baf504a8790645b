// jcs-leafsum256 (docs/watch-protocol.md): the sum modulo 2^256 of SHA-256 over the RFC 8785
// canonical JSON of [section, ...path, value] for every leaf of config and flags.
import { createHash } from "node:crypto";
import canonicalize from "canonicalize";

export const SCHEME = "jcs-leafsum256";
const MODULUS = 1n << 256n;

export function leafBytes(section, path, value) {
  return Buffer.from(canonicalize([section, ...path, value]), "utf8");
}

export function leafDigest(section, path, value) {
  return BigInt("0x" + createHash("sha256").update(leafBytes(section, path, value)).digest("hex"));
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The contribution of `value` placed at `path` of `section`: a sum over its leaves. */
export function subtreeSum(section, path, value) {
  if (isObject(value) && Object.keys(value).length > 0) {
    let total = 0n;
    for (const [key, child] of Object.entries(value)) total += subtreeSum(section, [...path, key], child);
    return total % MODULUS;
  }
  return path.length === 0 ? 0n : leafDigest(section, path, value);
}

export function snapshotDigest(config, flags) {
  return (subtreeSum("config", [], config) + subtreeSum("flags", [], flags)) % MODULUS;
}

export function formatHash(digest) {
  return `${SCHEME}:${digest.toString(16).padStart(64, "0")}`;
}

/** Subtract the old subtree's leaves, add the new one's: the digest after one update. */
export function patchDigest(digest, section, path, oldValue, newValue) {
  let next = digest;
  if (oldValue !== undefined) next -= subtreeSum(section, path, oldValue);
  if (newValue !== undefined) next += subtreeSum(section, path, newValue);
  return ((next % MODULUS) + MODULUS) % MODULUS;
}

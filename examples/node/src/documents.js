// Struct <-> JSON, and applying a delta's PathUpdates (docs/watch-protocol.md, "Snapshots and deltas").
import { patchDigest } from "./hash.js";

export function fromValue(v) {
  switch (v.kind) {
    case "nullValue": return null;
    case "numberValue": return v.numberValue;
    case "stringValue": return v.stringValue;
    case "boolValue": return v.boolValue;
    case "structValue": return fromStruct(v.structValue);
    case "listValue": return (v.listValue.values || []).map(fromValue);
    default: throw new Error("a Value with no kind");
  }
}

export function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = fromValue(v);
  return out;
}

function getPath(doc, path) {
  let node = doc;
  for (const key of path) {
    if (node === null || typeof node !== "object" || Array.isArray(node) || !(key in node)) return undefined;
    node = node[key];
  }
  return node;
}

/** The leaf strictly above `path` and its path, if there is one. */
function leafAbove(doc, path) {
  let node = doc;
  for (let depth = 1; depth < path.length; depth++) {
    node = node[path[depth - 1]];
    if (node === undefined) return null;
    if (node === null || typeof node !== "object" || Array.isArray(node) || Object.keys(node).length === 0) {
      return { path: path.slice(0, depth), node };
    }
  }
  return null;
}

/** `doc` with `value` at `path` (undefined: removed, with the objects above that held nothing else). */
function replaceAt(doc, path, value) {
  const root = structuredClone(doc);
  const spine = [root];
  let node = root;
  for (const key of path.slice(0, -1)) {
    let child = node[key];
    if (child === null || typeof child !== "object" || Array.isArray(child)) {
      if (value === undefined) return root;
      child = node[key] = {};
    }
    node = child;
    spine.push(node);
  }
  const last = path[path.length - 1];
  if (value === undefined) {
    delete node[last];
    for (let depth = path.length - 1; depth > 0; depth--) {
      if (Object.keys(spine[depth]).length > 0) break;
      delete spine[depth - 1][path[depth - 1]];
    }
  } else {
    node[last] = value;
  }
  return root;
}

const SECTIONS = { CONFIG: "config", FLAGS: "flags", 1: "config", 2: "flags" };

/** Apply `updates` in order to {config, flags}; returns the new documents and digest. */
export function applyUpdates(docs, digest, updates) {
  const out = { config: docs.config, flags: docs.flags };
  for (const u of updates) {
    const section = SECTIONS[u.section];
    if (!section || !u.path || u.path.length === 0) throw new Error("a delta update needs a section and a path");
    const value = u.value ? fromValue(u.value) : undefined;
    const old = getPath(out[section], u.path);
    if (old === undefined && value !== undefined) {
      // Setting below a leaf (a scalar, a list, an empty object) turns it into an object: it leaves the sum.
      const above = leafAbove(out[section], u.path);
      if (above) digest = patchDigest(digest, section, above.path, above.node, undefined);
    }
    digest = patchDigest(digest, section, u.path, old, value);
    out[section] = replaceAt(out[section], u.path, value);
  }
  return { docs: out, digest };
}

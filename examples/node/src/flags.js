// Local evaluation of confmesh flags: the common subset (on/off, targets, rules with clauses,
// fixed variants and percentage splits with murmur3 bucketing; docs/flags.md). Flags using
// prerequisites, rollouts, JsonLogic targeting or legacy-md5 bucketing answer the caller's
// default with reason ERROR: for those in any language, use flagd sync (docs/protocols.md).
import murmurhash3js from "murmurhash3js";

const BUCKETS = 10000n;

export function murmur3Bucket(salt, flagKey, value) {
  // murmurhash3js reads char codes as bytes: give it the UTF-8 bytes as a latin1 string.
  const bytes = Buffer.from(salt + flagKey + value, "utf8").toString("latin1");
  const h = BigInt(murmurhash3js.x86.hash32(bytes, 0) >>> 0);
  return Number((h * BUCKETS) >> 32n);
}

function bucketKey(ctx, bucketBy) {
  if (bucketBy) {
    const v = ctx[bucketBy];
    return v === undefined || v === null || v === "" ? null : String(v);
  }
  for (const name of ["targetingKey", "userId", "sessionId"]) {
    const v = ctx[name];
    if (v !== undefined && v !== null && v !== "") return String(v);
  }
  return null;
}

const TEXT_OPS = {
  contains: (v, w) => typeof v === "string" && w.some((x) => typeof x === "string" && v.includes(x)),
  starts_with: (v, w) => typeof v === "string" && v.startsWith(w[0]),
  ends_with: (v, w) => typeof v === "string" && v.endsWith(w[0]),
};
const NUMBER_OPS = { lt: (a, b) => a < b, lte: (a, b) => a <= b, gt: (a, b) => a > b, gte: (a, b) => a >= b };

function same(a, b) {
  return typeof a === typeof b && a === b;
}

function clauseMatches(clause, ctx) {
  const v = ctx[clause.attribute];
  if (v === undefined || v === null) return false;
  const { op, values } = clause;
  if (op === "in" || op === "equals") return (op === "in" ? values : [values[0]]).some((w) => same(v, w));
  if (op === "not_in" || op === "not_equals") return !(op === "not_in" ? values : [values[0]]).some((w) => same(v, w));
  if (op in TEXT_OPS) return TEXT_OPS[op](v, values);
  if (op in NUMBER_OPS) return typeof v === "number" && NUMBER_OPS[op](v, values[0]);
  throw new Error(`clause op ${op} is not supported by this reference client`);
}

const SUPPORTED = new Set(["variants", "default_variant", "off_variant", "enabled", "targets", "rules",
  "bucket_by", "salt", "bucketing", "key", "kind", "owner", "description", "created", "expires", "metadata"]);

export class Flags {
  constructor(definitions = {}) {
    this.definitions = definitions;
  }

  /** {value, variant, reason, errorCode?} for `key` and `ctx`; `defaultValue` when the flag says so. */
  evaluate(key, defaultValue, ctx = {}) {
    const flag = this.definitions[key];
    if (!flag) return { value: defaultValue, variant: null, reason: "ERROR", errorCode: "FLAG_NOT_FOUND" };
    const outcome = (variant, reason) =>
      variant === null || variant === undefined
        ? { value: defaultValue, variant: null, reason }
        : { value: flag.variants[variant], variant, reason };
    const unsupported = Object.keys(flag).filter((f) => !SUPPORTED.has(f) && flag[f] !== null && !(Array.isArray(flag[f]) && flag[f].length === 0));
    if (unsupported.length || (flag.bucketing && flag.bucketing !== "murmur3")) {
      return { value: defaultValue, variant: null, reason: "ERROR", errorCode: "GENERAL",
        errorMessage: `flag ${key} uses ${unsupported.join(", ") || flag.bucketing}, not evaluated here` };
    }
    if (flag.enabled === false) return outcome(flag.off_variant ?? null, "DISABLED");
    const hasLogic = (flag.targets || []).length > 0 || (flag.rules || []).length > 0;
    const userKey = bucketKey(ctx, null);
    for (const target of flag.targets || []) {
      const k = target.attribute ? bucketKey(ctx, target.attribute) : userKey;
      if (k !== null && target.values.includes(k)) return outcome(target.variant, "TARGETING_MATCH");
    }
    for (const rule of flag.rules || []) {
      if (!(rule.clauses || []).every((c) => clauseMatches(c, ctx))) continue;
      const serve = rule.serve;
      if (serve.split) {
        const value = bucketKey(ctx, flag.bucket_by ?? null);
        if (value === null) return { value: defaultValue, variant: null, reason: "ERROR", errorCode: "TARGETING_KEY_MISSING" };
        const bucket = murmur3Bucket(flag.salt || "", flag.key || key, value);
        let cut = 0;
        for (const part of serve.split) {
          cut += Math.round(part.percent * 100);
          if (bucket < cut) return outcome(part.variant, "SPLIT");
        }
        return outcome(serve.split[serve.split.length - 1].variant, "SPLIT");
      }
      if (serve.rollout) return { value: defaultValue, variant: null, reason: "ERROR", errorCode: "GENERAL" };
      return outcome(serve.variant ?? null, "TARGETING_MATCH");
    }
    return outcome(flag.default_variant ?? null, hasLogic ? "DEFAULT" : "STATIC");
  }
}

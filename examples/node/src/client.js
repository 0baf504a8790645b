// A confmesh Watch client: subscribe, apply whole snapshots and deltas with the hash check,
// ACK or NACK (with field errors) every snapshot, report what it runs, resume after a break.
import { EventEmitter } from "node:events";
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { SCHEME, formatHash, snapshotDigest } from "./hash.js";
import { applyUpdates, fromStruct } from "./documents.js";
import { Flags } from "./flags.js";

const PROTO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../proto");

export function loadConfigService() {
  const definition = protoLoader.loadSync("confmesh/v1/config.proto", {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: Number, enums: String, defaults: false, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).confmesh.v1.ConfigService;
}

/**
 * Events: "applied" {version, hash, config, flags, delta}, "rejected" {version, error, fieldErrors},
 * "current" {version} (a resume found nothing new), "heartbeat", "needFull" (a delta it could not apply:
 * it asked for the whole snapshot), "error" (the stream broke; it reconnects).
 * `validate(config)` returns a list of {path, message}: empty accepts the snapshot.
 */
export class ConfmeshClient extends EventEmitter {
  constructor({ address, environment, service, instanceId, labels = {}, validate = () => [],
                reportIntervalMs = 30000, state = null, credentials = grpc.credentials.createInsecure() }) {
    super();
    Object.assign(this, { address, environment, service, instanceId, labels, validate, reportIntervalMs });
    this.stub = new (loadConfigService())(address, credentials);
    // What we run: {version, hash, config, flags, digest}; `state` resumes from a saved one.
    this.current = state ? { ...state, digest: snapshotDigest(state.config, state.flags) } : null;
    this.flags = new Flags(this.current ? this.current.flags : {});
    this.closed = false;
    this.backoffMs = 100;
  }

  start() {
    this.closed = false;
    this.#connect();
    return this;
  }

  close() {
    this.closed = true;
    clearInterval(this.reporter);
    clearTimeout(this.retry);
    if (this.call) this.call.cancel();
    this.stub.close();
  }

  #connect() {
    const call = (this.call = this.stub.Watch());
    call.write({ subscribe: {
      environment: this.environment, service: this.service, instance_id: this.instanceId, labels: this.labels,
      known_version: this.current ? this.current.version : 0, known_hash: this.current ? this.current.hash : "",
      accept_delta: true, hash_schemes: [SCHEME],
    } });
    call.on("data", (msg) => {
      this.backoffMs = 100;
      if (msg.snapshot) this.#receive(call, msg.snapshot);
      else if (msg.heartbeat) this.emit("heartbeat", msg.heartbeat);
    });
    call.on("error", (err) => {
      if (this.closed) return;
      this.emit("error", err);
    });
    call.on("close", () => {
      clearInterval(this.reporter);
      if (this.closed) return;
      const wait = Math.min(this.backoffMs, 10000) * (0.5 + Math.random() / 2);
      this.backoffMs *= 2;
      this.retry = setTimeout(() => this.#connect(), wait);
    });
    this.reporter = setInterval(() => {
      if (this.current) call.write({ report: { version: this.current.version, hash: this.current.hash } });
    }, this.reportIntervalMs);
  }

  #receive(call, snap) {
    const cur = this.current;
    const version = Number(snap.version);
    if (cur && snap.hash === cur.hash && version <= cur.version) {
      call.write({ ack: { version, hash: snap.hash } });
      return;
    }
    if (cur && version < cur.version) {
      this.#nack(call, snap, `version ${version} is older than the running version ${cur.version}`, []);
      return;
    }
    let docs, digest;
    const isDelta = Boolean(snap.delta);
    if (isDelta) {
      const d = snap.delta;
      if (!cur || cur.version !== Number(d.base_version) || cur.hash !== d.base_hash) {
        this.#needFull(call, `delta from version ${d.base_version}, we run ${cur ? cur.version : "nothing"}`);
        return;
      }
      try {
        ({ docs, digest } = applyUpdates({ config: cur.config, flags: cur.flags }, cur.digest, d.updates || []));
      } catch (err) {
        this.#needFull(call, `unusable delta: ${err.message}`);
        return;
      }
      if (formatHash(digest) !== snap.hash) {
        this.#needFull(call, `delta to version ${version} does not give its hash`);
        return;
      }
    } else {
      docs = { config: fromStruct(snap.config), flags: fromStruct(snap.flags) };
      digest = snapshotDigest(docs.config, docs.flags);
      if (formatHash(digest) !== snap.hash) {
        this.#nack(call, snap, "content does not match its hash; snapshot corrupted in transit", []);
        return;
      }
    }
    const fieldErrors = this.validate(docs.config);
    if (fieldErrors.length > 0) {
      const error = fieldErrors.map((e) => `${e.path}: ${e.message}`).join("; ");
      this.#nack(call, snap, error, fieldErrors);
      return;
    }
    this.current = { version, hash: snap.hash, config: docs.config, flags: docs.flags, digest };
    this.flags = new Flags(docs.flags);
    call.write({ ack: { version, hash: snap.hash } });
    this.emit("applied", { version, hash: snap.hash, config: docs.config, flags: docs.flags, delta: isDelta });
  }

  #needFull(call, reason) {
    const cur = this.current;
    this.emit("needFull", reason);
    call.write({ report: { version: cur ? cur.version : 0, hash: cur ? cur.hash : "", need_full: true } });
  }

  #nack(call, snap, error, fieldErrors) {
    const running = this.current ? this.current.version : 0;
    call.write({ nack: { version: Number(snap.version), hash: snap.hash, running_version: running, error,
                         field_errors: fieldErrors.map((e) => ({ path: e.path, message: e.message })) } });
    this.emit("rejected", { version: Number(snap.version), error, fieldErrors });
  }

  /** What to save to resume later (state for the constructor). */
  saved() {
    const { version, hash, config, flags } = this.current || {};
    return this.current ? { version, hash, config, flags } : null;
  }
}

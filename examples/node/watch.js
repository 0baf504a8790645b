#!/usr/bin/env node
// Watch one (environment, service) and print one JSON line per event.
//   node watch.js --address 127.0.0.1:7070 --env prod --service orders [--instance ID]
//                 [--state FILE] [--max-pool N] [--flag KEY --users N]
// --state saves what it runs to FILE and resumes from it; --max-pool N rejects
// database.pool.max > N (a stand-in for a typed schema); --flag/--users print
// the flag's value for user-0 .. user-(N-1) after each applied snapshot.
import fs from "node:fs";
import { parseArgs } from "node:util";
import { ConfmeshClient } from "./src/client.js";

const { values: opts } = parseArgs({ options: {
  address: { type: "string", default: "127.0.0.1:7070" }, env: { type: "string" }, service: { type: "string" },
  instance: { type: "string", default: `node-${process.pid}` }, state: { type: "string" },
  "max-pool": { type: "string" }, flag: { type: "string" }, users: { type: "string", default: "0" },
} });

const maxPool = opts["max-pool"] === undefined ? Infinity : Number(opts["max-pool"]);
function validate(config) {
  const max = config?.database?.pool?.max;
  if (max === undefined) return [];
  if (typeof max !== "number" || !Number.isInteger(max)) return [{ path: "database.pool.max", message: "must be an integer" }];
  return max > maxPool ? [{ path: "database.pool.max", message: `must be at most ${maxPool}` }] : [];
}

const state = opts.state && fs.existsSync(opts.state) ? JSON.parse(fs.readFileSync(opts.state, "utf8")) : null;
const client = new ConfmeshClient({ address: opts.address, environment: opts.env, service: opts.service,
                                    instanceId: opts.instance, validate, state, labels: { sdk: "node-reference" } });
const print = (event) => process.stdout.write(JSON.stringify(event) + "\n");
let first = true;

client.on("applied", (s) => {
  first = false;
  const event = { event: "applied", version: s.version, hash: s.hash, delta: s.delta, config: s.config };
  if (opts.flag) {
    event.flag = {};
    for (let n = 0; n < Number(opts.users); n++) {
      event.flag[`user-${n}`] = client.flags.evaluate(opts.flag, null, { targetingKey: `user-${n}` }).value;
    }
  }
  if (opts.state) fs.writeFileSync(opts.state, JSON.stringify(client.saved()));
  print(event);
});
client.on("rejected", (r) => print({ event: "rejected", version: r.version, error: r.error, fields: r.fieldErrors.map((e) => e.path) }));
client.on("heartbeat", () => {
  if (first && client.current) print({ event: "current", version: client.current.version });
  first = false;
});
client.on("needFull", (reason) => print({ event: "need_full", reason }));
client.on("error", (err) => print({ event: "error", code: err.code, message: err.details }));
process.on("SIGTERM", () => { client.close(); process.exit(0); });
client.start();

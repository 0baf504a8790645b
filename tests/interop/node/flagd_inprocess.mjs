// Drives OpenFeature's Node flagd provider, in-process mode, against a confmesh server.
// Usage: node flagd_inprocess.mjs HOST PORT SELECTOR
// Reads one JSON command per stdin line and answers with one JSON line on stdout:
//   {"op":"details","type":"string"|"boolean","flag":K,"default":V,"context":{}}
//   {"op":"rollout","flag":K,"users":N}     -> {"values":[...]} for user-0..user-(N-1)
//   {"op":"await","flag":K,"value":V,"timeout_ms":T} -> {"ok":bool,"elapsed_ms":ms}
import { createInterface } from "node:readline";
import { OpenFeature } from "@openfeature/server-sdk";
import { FlagdProvider } from "@openfeature/flagd-provider";

const [host, port, selector] = process.argv.slice(2);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const provider = new FlagdProvider({
  resolverType: "in-process",
  host,
  port: Number(port),
  selector,
  deadlineMs: 5000,
  retryBackoffMs: 200,
  retryBackoffMaxMs: 500,
});
await OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();
emit({ event: "ready" });

async function details(cmd) {
  const get = cmd.type === "boolean" ? client.getBooleanDetails : client.getStringDetails;
  const d = await get.call(client, cmd.flag, cmd.default, cmd.context ?? {});
  return { value: d.value, reason: d.reason, variant: d.variant ?? null, errorCode: d.errorCode ?? null };
}

async function rollout(cmd) {
  const values = [];
  for (let n = 0; n < cmd.users; n++) {
    const uid = `user-${n}`;
    values.push(await client.getStringValue(cmd.flag, "none", { targetingKey: uid, user: { id: uid } }));
  }
  return { values };
}

async function awaitValue(cmd) {
  const started = performance.now();
  while (performance.now() - started < cmd.timeout_ms) {
    const value = await client.getBooleanValue(cmd.flag, !cmd.value);
    if (value === cmd.value) return { ok: true, elapsed_ms: performance.now() - started };
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return { ok: false, elapsed_ms: performance.now() - started };
}

const ops = { details, rollout, await: awaitValue };
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  if (cmd.op === "close") break;
  try {
    emit({ event: cmd.op, ...(await ops[cmd.op](cmd)) });
  } catch (err) {
    emit({ event: "error", message: String(err) });
  }
}
await OpenFeature.close();
process.exit(0);

// confmesh console: hash-routed pages over /console/api. No framework, no build step.
// Every value from the server is set as text (never as HTML).
"use strict";

const API = "/console/api";
const main = () => document.getElementById("main");
let me = null;
let render = null; // the current page's redraw, called again on live updates
let editing = false; // a form holds unsaved input: live updates do not redraw it

// -- small helpers -------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const json = (v) => (v === undefined ? "" : JSON.stringify(v));
const when = (ts) => (ts ? new Date(ts).toLocaleString() : "");
const cookie = (name) => {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
};

function layerName(layer) {
  if (!layer) return "";
  if (typeof layer === "string") return layer;
  const kind = (layer.kind || "").replace("LAYER_KIND_", "").toLowerCase();
  if (kind === "defaults") return "defaults";
  if (kind === "environment") return `env/${layer.environment}`;
  if (kind === "flags") return `flags/${layer.environment}`;
  return `service/${layer.environment}/${layer.service}`;
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "";
    this.field = e.field || "";
  }
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": cookie("cm_csrf") },
    body: JSON.stringify(body),
  };
  const res = await fetch(API + path, { credentials: "same-origin", ...init });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    if (res.status === 401 && !location.hash.startsWith("#/login")) location.hash = "#/login";
    throw new ApiError(res.status, data);
  }
  return data;
}

function notice(text, kind = "bad") {
  return h("div", { class: `notice ${kind}`, testid: kind === "bad" ? "error" : "notice" }, text);
}

// The result of the last action on this page: kept across live redraws, cleared on navigation.
let box = null;
function resultBox() {
  if (!box) box = h("div", { testid: "result" });
  return box;
}

// Marks a form dirty, so live updates do not redraw it under the user.
function dirty(el) {
  el.addEventListener("input", () => { editing = true; });
  return el;
}

function show(...nodes) {
  main().replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function canWrite(page) {
  return page.writable !== false && me && me.role !== "reader" && me.role !== "service";
}

// A confirmation dialog with a required reason; resolves to the reason, or null when cancelled.
function confirmWithReason(title, action) {
  const dialog = document.getElementById("dialog");
  return new Promise((resolve) => {
    const reason = h("input", { testid: "reason", placeholder: "reason (required)", size: 40 });
    const ok = h("button", { class: "danger", testid: "confirm", disabled: true }, action);
    reason.addEventListener("input", () => { ok.disabled = !reason.value.trim(); });
    ok.addEventListener("click", () => { dialog.close(); resolve(reason.value.trim()); });
    const cancel = h("button", { class: "secondary", onclick: () => { dialog.close(); resolve(null); } }, "Cancel");
    dialog.replaceChildren(h("h2", {}, title), h("div", { class: "row" }, reason), h("div", { class: "row" }, ok, cancel));
    dialog.showModal();
    reason.focus();
  });
}

// -- pages ---------------------------------------------------------------------------------------

async function loginPage() {
  const token = h("input", { type: "password", testid: "token", placeholder: "cmt_…", size: 60, autocomplete: "off" });
  const out = h("div");
  const go = async (ev) => {
    ev.preventDefault();
    try {
      me = await api("/login", { token: token.value.trim() });
      live();
      location.hash = "#/";
    } catch (err) {
      out.replaceChildren(notice(err.message));
    }
  };
  return [h("h1", {}, "Log in"),
    h("form", { onsubmit: go }, h("p", { class: "muted" }, "Paste a confmesh bearer token (confmesh token create)."),
      h("div", { class: "row" }, token, h("button", { testid: "login" }, "Log in"))), out];
}

async function homePage() {
  const data = await api("/scopes");
  return [h("h1", {}, "Environments and services"),
    h("table", { testid: "services" },
      h("tr", {}, h("th", {}, "environment"), h("th", {}, "service"), h("th", {}, "version"), h("th", {}, "instances"), h("th", {}, "schema"), h("th", {}, "")),
      data.services.map((s) => h("tr", {},
        h("td", {}, s.environment),
        h("td", {}, h("a", { href: `#/service/${s.environment}/${s.service}` }, s.service)),
        h("td", {}, s.version), h("td", {}, s.instances), h("td", {}, s.schema ? "yes" : ""),
        h("td", {}, h("a", { href: `#/fleet/${s.environment}/${s.service}` }, "fleet"), " · ",
          h("a", { href: `#/flags/${s.environment}` }, "flags"))))),
    h("h2", {}, "Flag environments"),
    h("p", {}, data.environments.map((e) => [h("a", { href: `#/flags/${e}` }, e), " "]))];
}

function inputFor(key, value, schemaType) {
  const type = schemaType || (typeof value === "number" ? "number" : typeof value === "boolean" ? "boolean" : typeof value === "string" ? "string" : "json");
  if (type === "boolean") {
    const el = h("select", { "data-key": key, "data-type": "boolean" }, h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
    el.value = String(value === true);
    return el;
  }
  if (type === "number" || type === "integer") return h("input", { "data-key": key, "data-type": "number", type: "text", value: value === undefined ? "" : String(value), size: 12 });
  if (type === "string") return h("input", { "data-key": key, "data-type": "string", value: value === undefined ? "" : value, size: 40 });
  return h("input", { "data-key": key, "data-type": "json", value: json(value), size: 40 });
}

function schemaTypeOf(schema, key) {
  let node = schema;
  for (const part of key.split(".")) {
    if (!node || !node.properties || !node.properties[part]) return null;
    node = node.properties[part];
  }
  const t = node && node.type;
  return Array.isArray(t) ? t.find((x) => x !== "null") : t;
}

function readInput(el) {
  const raw = el.value;
  switch (el.dataset.type) {
    case "boolean": return raw === "true";
    case "number": {
      const n = Number(raw);
      if (raw.trim() === "" || Number.isNaN(n)) throw new ApiError(400, { error: { message: "not a number", field: el.dataset.key } });
      return n;
    }
    case "string": return raw;
    default:
      try { return JSON.parse(raw); } catch { throw new ApiError(400, { error: { message: "not JSON", field: el.dataset.key } }); }
  }
}

async function servicePage(env, service) {
  const data = await api(`/config?env=${encodeURIComponent(env)}&service=${encodeURIComponent(service)}`);
  const writable = canWrite(data);
  const inputs = {};
  const errors = {};
  const rows = data.rows.map((r) => {
    const own = r.layer === `service/${env}/${service}`;
    const el = inputFor(r.key, r.value, data.schema && schemaTypeOf(data.schema, r.key));
    el.disabled = !writable;
    el.addEventListener("input", () => { editing = true; });
    inputs[r.key] = { el, original: json(r.value) };
    errors[r.key] = h("div", { class: "field-error", testid: `error-${r.key}` });
    const row = h("tr", { testid: `row-${r.key}` }, h("td", { class: "mono" }, r.key), h("td", {}, el, errors[r.key]),
      h("td", { class: own ? "" : "muted" }, r.layer,
        h("button", { class: "secondary small", testid: "delete", title: "delete this key from the chosen layer", disabled: !writable,
          onclick: () => { editing = true; deleted.has(r.key) ? deleted.delete(r.key) : deleted.add(r.key); row.classList.toggle("deleted", deleted.has(r.key)); } }, "✕")));
    return row;
  });
  const deleted = new Set();
  const layerPick = h("select", { testid: "layer", disabled: !writable },
    h("option", { value: "service" }, `service/${env}/${service}`), h("option", { value: "env" }, `env/${env}`), h("option", { value: "defaults" }, "defaults (every service)"));
  const newKey = dirty(h("input", { testid: "new-key", placeholder: "new.key", disabled: !writable }));
  const newValue = dirty(h("input", { testid: "new-value", placeholder: "JSON value", disabled: !writable }));
  const out = resultBox();
  const reason = dirty(h("input", { testid: "edit-reason", placeholder: "reason", size: 40, disabled: !writable }));
  const submit = async (mode) => {
    for (const e of Object.values(errors)) e.textContent = "";
    for (const { el } of Object.values(inputs)) el.classList.remove("invalid");
    const set = {};
    try {
      for (const [key, { el, original }] of Object.entries(inputs)) {
        const value = readInput(el);
        if (json(value) !== original) set[key] = value;
      }
      if (newKey.value.trim()) {
        try { set[newKey.value.trim()] = JSON.parse(newValue.value); } catch { set[newKey.value.trim()] = newValue.value; }
      }
      for (const key of deleted) delete set[key];
      if (!Object.keys(set).length && !deleted.size) { out.replaceChildren(notice("Nothing changed.", "ok")); return; }
      const res = await api("/config", { env, service, set, delete: [...deleted], layer: layerPick.value, reason: reason.value, mode });
      out.replaceChildren(notice(resultMessage(mode, res), "ok"));
      if (mode === "check") return; // the edit stays on the page, to save or change
      editing = false;
      if (mode === "propose") location.hash = `#/change/${res.change.id}`;
      else setTimeout(redraw, 300);
    } catch (err) {
      const field = err.field || "";
      const target = Object.keys(inputs).find((k) => field === k || field.startsWith(k + ".")) || Object.keys(inputs).find((k) => k.startsWith(field + "."));
      if (target) {
        inputs[target].el.classList.add("invalid");
        errors[target].textContent = `${field}: ${err.message}`;
      }
      const extra = err.code === "approval_required" ? " Propose it for review instead." : "";
      out.replaceChildren(notice(`${field ? field + ": " : ""}${err.message}${extra}`));
    }
  };
  const needsApproval = data.approvals > 0;
  return [h("h1", {}, `${env}/${service}`),
    h("p", { class: "muted" }, `version ${data.version} · ${data.hash.slice(0, 32)}… · `, h("a", { href: `#/fleet/${env}/${service}` }, "fleet"),
      data.schema ? " · validated against its registered schema" : " · no schema registered"),
    data.notice && h("div", { class: "notice bad", testid: "scope-notice" }, `Warning: ${data.notice}`),
    !writable && notice("You may read this service but not change it: the editor is read-only.", "ok"),
    needsApproval && notice(`Changes here need ${data.approvals} approval(s): saving proposes a change request.`, "ok"),
    h("table", { testid: "config" }, h("tr", {}, h("th", {}, "key"), h("th", {}, "value"), h("th", {}, "layer")), rows),
    h("div", { class: "row" }, newKey, newValue, "write to", layerPick),
    h("div", { class: "row" }, reason,
      h("button", { testid: "save", disabled: !writable, onclick: () => submit(needsApproval ? "propose" : "write") }, needsApproval ? "Check and propose" : "Check and save"),
      h("button", { class: "secondary", testid: "check", disabled: !writable, onclick: () => submit("check") }, "Check only")),
    out];
}

/** What a config submit did, by mode: a check saves nothing, so it never names a version. */
function resultMessage(mode, res) {
  if (mode === "propose") return `Proposed as change ${res.change.id}.`;
  if (mode === "check") {
    const scopes = (res.change && res.change.scopes) || [];
    const checked = scopes.filter((s) => s.has_schema).length;
    return `Check passed: ${scopes.length} service(s) affected, ${checked} registered schema(s) accept it. Nothing was saved.`;
  }
  return `Saved as version ${res.revision}.`;
}

async function flagsIndex() {
  const data = await api("/scopes");
  return [h("h1", {}, "Flags"), h("p", {}, "Environment: ", data.environments.map((e) => [h("a", { href: `#/flags/${e}` }, e), " "]))];
}

async function flagsPage(env) {
  const data = await api(`/flags?env=${encodeURIComponent(env)}`);
  const writable = canWrite(data);
  const out = resultBox();
  const kill = async (flag, enabled) => {
    const reason = await confirmWithReason(`${enabled ? "Turn on" : "Kill"} ${flag.key} in ${env}?`, enabled ? "Turn on" : "Kill");
    if (reason === null) return;
    try {
      const res = await api("/flags/kill", { env, key: flag.key, enabled, reason, confirm: true });
      out.replaceChildren(notice(`${flag.key} is ${enabled ? "on" : "killed"}: version ${res.revision}.`, "ok"));
      redraw();
    } catch (err) {
      out.replaceChildren(notice(err.message));
    }
  };
  return [h("h1", {}, `Flags in ${env}`),
    h("p", { class: "muted" }, `version ${data.version}`),
    !writable && notice("You may read these flags but not change them.", "ok"),
    h("table", { testid: "flags" },
      h("tr", {}, h("th", {}, "flag"), h("th", {}, "state"), h("th", {}, "kind"), h("th", {}, "owner"), h("th", {}, "expires"), h("th", {}, "")),
      data.flags.map((f) => h("tr", { testid: `flag-${f.key}` },
        h("td", {}, h("a", { href: `#/flag/${env}/${f.key}` }, f.key), h("div", { class: "muted" }, f.description)),
        h("td", {}, h("span", { class: `pill ${f.enabled ? "on" : "off"}`, testid: "state" }, f.enabled ? "on" : "killed")),
        h("td", {}, f.kind), h("td", {}, f.owner), h("td", {}, f.expires || ""),
        h("td", {}, f.enabled
          ? h("button", { class: "danger", testid: "kill", disabled: !writable, onclick: () => kill(f, false) }, "Kill")
          : h("button", { class: "secondary", testid: "enable", disabled: !writable, onclick: () => kill(f, true) }, "Turn on"))))),
    out];
}

const VARIANT_COLORS = ["#1f6feb", "#1a7f37", "#c62828", "#9a6700", "#8250df", "#0a7d8c", "#bf3989", "#57606a"];

/** A flag's evaluations per minute, one line per variant, over the last `minutes` (fleet-wide counts the
 * clients report); minutes without evaluations count zero. */
function usageChart(usage) {
  const W = 640, H = 160, L = 44, B = 20, STEP = 60;
  const end = Math.floor(usage.now / STEP) * STEP, start = end - (usage.minutes - 1) * STEP;
  const byMinute = new Map(usage.series.map((b) => [b.t, b.variants]));
  const variants = [...new Set(usage.series.flatMap((b) => Object.keys(b.variants)))].sort();
  const top = Math.max(1, ...usage.series.flatMap((b) => Object.values(b.variants)));
  const x = (t) => L + ((t - start) / Math.max(1, end - start)) * (W - L - 8);
  const y = (n) => H - B - (n / top) * (H - B - 8);
  const total = (v) => usage.series.reduce((sum, b) => sum + (b.variants[v] || 0), 0);
  const line = (v) => {
    const pts = [];
    for (let t = start; t <= end; t += STEP) pts.push(`${x(t).toFixed(1)},${y((byMinute.get(t) || {})[v] || 0).toFixed(1)}`);
    return pts.join(" ");
  };
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart", testid: "usage-chart", role: "img",
      "aria-label": `evaluations per minute by variant, last ${usage.minutes} minutes` },
    svg("line", { x1: L, y1: y(0), x2: W - 8, y2: y(0), stroke: "#c8ccd4" }),
    svg("text", { x: 4, y: y(top) + 4, "font-size": 11, fill: "#666" }, top),
    svg("text", { x: 4, y: y(0) + 4, "font-size": 11, fill: "#666" }, 0),
    svg("text", { x: L, y: H - 4, "font-size": 11, fill: "#666" }, `-${usage.minutes} min`),
    variants.map((v, i) => svg("polyline", { points: line(v), fill: "none", stroke: VARIANT_COLORS[i % VARIANT_COLORS.length],
      "stroke-width": 2, testid: `usage-${v || "default"}` }, svg("title", {}, v || "(caller's default)"))),
    variants.map((v, i) => svg("text", { x: L + 70 + i * 110, y: H - 4, "font-size": 11, fill: VARIANT_COLORS[i % VARIANT_COLORS.length] },
      `${v || "(default)"} ${total(v)}`)));
}

async function flagUsage(env, key) {
  try {
    const usage = await api(`/flags/usage?env=${encodeURIComponent(env)}&key=${encodeURIComponent(key)}&minutes=60`);
    if (!usage.series.length) return h("p", { class: "muted", testid: "usage-none" }, "No evaluations reported in the last hour.");
    return usageChart(usage);
  } catch (err) {
    return notice(err.message);
  }
}

async function flagEditor(env, key) {
  const data = await api(`/flags?env=${encodeURIComponent(env)}`);
  const flag = data.flags.find((f) => f.key === key);
  const writable = canWrite(data);
  const definition = h("textarea", { testid: "definition", class: "tall", disabled: !writable }, JSON.stringify(flag ? flag.definition : { variants: { on: true, off: false }, default_variant: "off" }, null, 2));
  const context = h("textarea", { testid: "context", class: "short" }, JSON.stringify({ targetingKey: "user-1" }, null, 2));
  const result = h("pre", { testid: "explain" });
  const out = resultBox();
  let timer = null;
  const explain = async () => {
    let def, ctx;
    try { def = JSON.parse(definition.value); ctx = JSON.parse(context.value); } catch (err) { result.textContent = `not JSON: ${err.message}`; return; }
    try {
      const r = await api("/flags/explain", { env, key, definition: def, context: ctx });
      result.textContent = `value ${json(r.value)} · variant ${r.variant} · ${r.reason}${r.error ? " · " + r.error : ""}\n\n${r.trace.join("\n")}`;
    } catch (err) {
      result.textContent = err.message;
    }
  };
  const later = () => { editing = true; clearTimeout(timer); timer = setTimeout(explain, 250); };
  definition.addEventListener("input", later);
  context.addEventListener("input", later);
  const needsApproval = data.approvals > 0;
  const save = async () => {
    try {
      const res = await api("/flags/save", { env, key, definition: JSON.parse(definition.value), mode: needsApproval ? "propose" : "write", reason: "edited in the console" });
      editing = false;
      if (res.change) location.hash = `#/change/${res.change.id}`;
      else out.replaceChildren(notice(`Saved as version ${res.revision}.`, "ok"));
    } catch (err) {
      out.replaceChildren(notice(`${err.field ? err.field + ": " : ""}${err.message}`));
    }
  };
  explain();
  const usage = flag ? await flagUsage(env, key) : null;
  return [h("h1", {}, `${key} in ${env}`),
    flag && [h("h2", {}, "Evaluations per minute, by variant"), usage],
    h("div", { class: "cols" },
      h("div", {}, h("h2", {}, "Definition and rules"), definition,
        h("div", { class: "row" }, h("button", { testid: "save-flag", disabled: !writable, onclick: save }, needsApproval ? "Propose" : "Save"))),
      h("div", {}, h("h2", {}, "Explain for a test context"), context, result)),
    out];
}

function stateName(c) {
  const s = (c.state || "").replace("CHANGE_STATE_", "").toLowerCase();
  if (s === "approved" && c.apply_at) return `scheduled ${when(c.apply_at)}`;
  return s + (c.stale ? " (stale)" : "");
}

async function changesPage() {
  const data = await api("/changes");
  return [h("h1", {}, "Change requests"),
    h("table", { testid: "changes" },
      h("tr", {}, h("th", {}, "id"), h("th", {}, "title"), h("th", {}, "state"), h("th", {}, "approvals"), h("th", {}, "author"), h("th", {}, "proposed")),
      data.changes.map((c) => h("tr", {},
        h("td", { class: "mono" }, h("a", { href: `#/change/${c.id}` }, c.id)), h("td", {}, c.title),
        h("td", { testid: "state" }, stateName(c)), h("td", {}, `${c.approvals}/${c.approvals_required}`),
        h("td", {}, c.author), h("td", {}, when(c.created_at)))))];
}

async function changePage(id) {
  const data = await api(`/changes/${id}`);
  const c = data.change;
  const out = resultBox();
  const act = async (action, extra = {}) => {
    try {
      await api(`/changes/${id}/${action}`, extra);
      out.replaceChildren();
      editing = false;
      redraw();
    } catch (err) {
      out.replaceChildren(notice(err.message));
    }
  };
  const open = ["CHANGE_STATE_OPEN", "CHANGE_STATE_APPROVED"].includes(c.state);
  const at = dirty(h("input", { type: "datetime-local", step: 1, testid: "schedule-at" }));
  const comment = dirty(h("input", { testid: "comment", placeholder: "comment", size: 30 }));
  return [h("h1", {}, `Change ${c.id}: ${c.title}`),
    h("p", {}, h("span", { class: "pill", testid: "change-state" }, stateName(c)), ` proposed by ${c.author} ${when(c.created_at)} · approvals ${c.approvals}/${c.approvals_required}`,
      c.applied_revision ? ` · applied as version ${c.applied_revision} by ${c.applied_by}` : ""),
    c.reason && h("p", {}, c.reason),
    c.error && notice(c.error),
    c.stale && notice(`Stale: ${c.stale_layers.join(", ")} changed since the proposal. Propose it again.`),
    h("h2", {}, "Diff"),
    h("table", { testid: "diff" }, h("tr", {}, h("th", {}, "layer"), h("th", {}, "key"), h("th", {}, "old"), h("th", {}, "new")),
      c.diff.map((d) => h("tr", {}, h("td", {}, layerName(d.layer)), h("td", { class: "mono" }, d.key),
        h("td", { class: "mono" }, d.existed ? json(d.old) : "—"), h("td", { class: "mono" }, d.op === "delete" ? "(deleted)" : json(d.new))))),
    c.rollout && h("p", {}, `Starts rollout ${c.rollout.name} of ${c.rollout.environment}/${c.rollout.service} at ${c.rollout.percent}%.`),
    h("h2", {}, "Blast radius"),
    h("table", { testid: "blast" }, h("tr", {}, h("th", {}, "scope"), h("th", {}, "keys that change"), h("th", {}, "instances"), h("th", {}, "schema")),
      c.scopes.map((s) => h("tr", {}, h("td", {}, `${s.environment}/${s.service}`), h("td", { class: "mono" }, s.changed_keys.join(", ")),
        h("td", {}, s.instances), h("td", { class: s.schema_accepts ? "ok" : "bad" }, !s.has_schema ? "none" : s.schema_accepts ? "accepts" : `refuses: ${s.schema_error}`))),
      c.flags.map((f) => h("tr", {}, h("td", {}, `flags/${f.environment}`), h("td", { class: "mono" }, f.changed_flags.join(", ")),
        h("td", {}, f.instances), h("td", { class: f.valid ? "ok" : "bad" }, f.valid ? "valid" : f.error)))),
    c.scopes_not_shown ? h("p", { class: "muted" }, `+${c.scopes_not_shown} scope(s) not shown`) : null,
    h("h2", {}, "Reviews"),
    h("ul", {}, c.reviews.map((r) => h("li", {}, `${r.approve ? "approved" : "rejected"} by ${r.identity} ${when(r.at)} ${r.comment}`))),
    open && h("div", { class: "row" }, comment,
      h("button", { testid: "approve", disabled: !data.may_review, onclick: () => act("approve", { reason: comment.value }) }, "Approve"),
      h("button", { class: "danger", testid: "reject", disabled: !data.may_review, onclick: () => act("reject", { reason: comment.value }) }, "Reject"),
      h("button", { testid: "apply", disabled: !data.may_apply, onclick: () => act("apply") }, "Apply now"),
      h("button", { class: "secondary", testid: "cancel", onclick: () => act("cancel") }, "Withdraw")),
    open && h("div", { class: "row" }, "Apply at ", at,
      h("button", { class: "secondary", testid: "schedule", disabled: !data.may_apply, onclick: () => act("schedule", { apply_at: at.value ? new Date(at.value).getTime() / 1000 : 0 }) }, "Schedule")),
    out];
}

function versionTable(versions) {
  return h("table", { testid: "versions" },
    h("tr", {}, h("th", {}, "version"), h("th", {}, "ACKed"), h("th", {}, "NACKed"), h("th", {}, "pending"), h("th", {}, "rejected fields")),
    versions.map((v) => h("tr", { testid: `version-${v.version}` },
      h("td", {}, v.version), h("td", { class: "ok", testid: "acked" }, v.acked), h("td", { class: v.nacked ? "bad" : "", testid: "nacked" }, v.nacked),
      h("td", { testid: "pending" }, v.pending),
      h("td", {}, v.rejections.map((r) => h("div", {}, h("code", {}, r.field_path || "(no field)"), ` × ${r.instances}: ${r.example_error}`))))));
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "testid") el.dataset.testid = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) if (c != null && c !== false) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// Adoption over time, sampled on this page at every live update (kept while the page stays open).
const adoption = {};
const SERIES = [["acked", "ACKed", "#1a7f37"], ["nacked", "NACKed", "#c62828"], ["pending", "pending", "#8a8f98"]];

function recordAdoption(scope, status) {
  const current = status.versions.find((v) => v.version === status.current_version) || { acked: 0, nacked: 0, pending: 0 };
  const samples = (adoption[scope] ||= []);
  const last = samples[samples.length - 1];
  const sample = { t: Date.now(), version: status.current_version, acked: current.acked, nacked: current.nacked, pending: current.pending };
  if (!last || ["version", "acked", "nacked", "pending"].some((k) => last[k] !== sample[k])) samples.push(sample);
  if (samples.length > 500) samples.shift();
  return samples;
}

/** The current version's ACKed, NACKed and pending instances over time, as step lines; a new version is a
 * dashed vertical mark, so a rollout or a bad push shows as a curve. */
function adoptionChart(samples) {
  const W = 640, H = 160, L = 36, B = 20;
  const now = Date.now();
  const t0 = Math.min(samples[0].t, now - 5_000);
  const top = Math.max(1, ...samples.map((s) => s.acked + s.nacked + s.pending));
  const x = (t) => L + ((t - t0) / Math.max(1, now - t0)) * (W - L - 8);
  const y = (n) => H - B - (n / top) * (H - B - 8);
  const line = (key) => {
    let pts = "";
    samples.forEach((s, i) => {
      const next = i + 1 < samples.length ? samples[i + 1].t : now;
      pts += `${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)} ${x(next).toFixed(1)},${y(s[key]).toFixed(1)} `;
    });
    return pts.trim();
  };
  const marks = samples.filter((s, i) => i > 0 && s.version !== samples[i - 1].version);
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart", testid: "adoption-chart", role: "img",
      "aria-label": "instances on the current version over time" },
    svg("line", { x1: L, y1: y(0), x2: W - 8, y2: y(0), stroke: "#c8ccd4" }),
    svg("text", { x: 4, y: y(top) + 4, "font-size": 11, fill: "#666" }, top),
    svg("text", { x: 4, y: y(0) + 4, "font-size": 11, fill: "#666" }, 0),
    marks.map((m) => [svg("line", { x1: x(m.t), y1: 8, x2: x(m.t), y2: y(0), stroke: "#999", "stroke-dasharray": "3 3" }),
      svg("text", { x: x(m.t) + (x(m.t) > W - 60 ? -3 : 3), y: 18, "font-size": 11, fill: "#666",
        "text-anchor": x(m.t) > W - 60 ? "end" : "start" }, `v${m.version}`)]),
    SERIES.map(([key, label, color]) => svg("polyline", { points: line(key), fill: "none", stroke: color, "stroke-width": 2, testid: `series-${key}` },
      svg("title", {}, label))),
    SERIES.map(([key, label, color], i) => svg("text", { x: L + 8 + i * 90, y: H - 4, "font-size": 11, fill: color }, `${label} ${samples[samples.length - 1][key]}`)));
}

async function fleetPage(env, service) {
  const data = await api(`/fleet?env=${encodeURIComponent(env)}&service=${encodeURIComponent(service)}`);
  const s = data.status;
  const samples = recordAdoption(`${env}/${service}`, s);
  return [h("h1", {}, `Fleet of ${env}/${service}`),
    h("p", {}, "current version ", h("b", { testid: "current-version" }, s.current_version), ` · ${s.instances} connected instance(s) across ${s.replicas.length} replica(s)`),
    h("h2", {}, "Adoption of the current version"),
    adoptionChart(samples),
    versionTable(s.versions),
    h("h2", {}, "Instances"),
    h("table", { testid: "instances" }, h("tr", {}, h("th", {}, "instance"), h("th", {}, "replica (via relays)"), h("th", {}, "runs"), h("th", {}, "sent"), h("th", {}, "last rejection")),
      data.instances.map((i) => h("tr", {}, h("td", { class: "mono" }, i.instance_id), h("td", { class: "mono" }, i.server_id.slice(0, 12) + (i.relay_path ? ` via ${i.relay_path}` : "")),
        h("td", {}, i.acked_version), h("td", {}, i.sent_version),
        h("td", { class: "bad" }, i.nack ? `v${i.nack.version}: ${i.nack.field_paths.join(", ")} ${i.nack.error}` : ""))))];
}

async function rolloutsPage() {
  const data = await api("/rollouts");
  const out = resultBox();
  const act = async (r, action, extra = {}) => {
    try {
      await api(`/rollouts/${action}`, { env: r.environment, service: r.service, ...extra });
      out.replaceChildren();
      editing = false;
      redraw();
    } catch (err) {
      out.replaceChildren(notice(err.message));
    }
  };
  const writable = canWrite({});
  return [h("h1", {}, "Rollouts"), out,
    data.rollouts.length ? null : h("p", { class: "muted" }, "No rollouts."),
    data.rollouts.map(({ rollout: r, status }) => {
      const percent = dirty(h("input", { value: String(r.percent), size: 5, testid: "percent" }));
      return h("section", { testid: `rollout-${r.name}` },
        h("h2", {}, `${r.name}: ${r.environment}/${r.service} at ${r.percent}% (${r.state})`),
        r.abort_reason && notice(r.abort_reason),
        h("p", { class: "muted" }, `canaries on this replica: ${r.canary_instances}, ACKed ${r.canary_acked}, NACKed ${r.canary_nacked}; max NACK rate ${r.max_nack_rate}`),
        versionTable(status.versions),
        r.state === "active" && h("div", { class: "row" }, percent, "%",
          h("button", { class: "secondary", testid: "set-percent", disabled: !writable, onclick: () => act(r, "percent", { percent: Number(percent.value) }) }, "Set"),
          h("button", { testid: "promote", disabled: !writable, onclick: () => act(r, "promote") }, "Promote"),
          h("button", { class: "danger", testid: "abort", disabled: !writable, onclick: () => act(r, "abort", { reason: "aborted in the console" }) }, "Abort")));
    }),
    data.history.length ? [h("h2", {}, "History"),
      h("table", { testid: "rollout-history" },
        h("tr", {}, h("th", {}, "when"), h("th", {}, "step"), h("th", {}, "rollout"), h("th", {}, "by"), h("th", {}, "reason")),
        data.history.map((s) => h("tr", {}, h("td", {}, when(s.at)), h("td", {}, s.action), h("td", {}, s.what), h("td", {}, s.actor), h("td", {}, s.reason))))] : null];
}

async function auditPage() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const fields = ["env", "service", "key", "actor"].map((f) => h("input", { placeholder: f, value: q.get(f) || "", "data-f": f, size: 14 }));
  const apply = (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const el of fields) if (el.value) p.set(el.dataset.f, el.value);
    location.hash = `#/audit?${p}`;
  };
  const data = await api(`/audit?${q}`);
  return [h("h1", {}, "Audit"),
    h("form", { class: "row", onsubmit: apply }, fields, h("button", {}, "Filter")),
    h("table", { testid: "audit" }, h("tr", {}, h("th", {}, "when"), h("th", {}, "who"), h("th", {}, "what"), h("th", {}, "changes")),
      data.records.map((r) => h("tr", {}, h("td", {}, when(r.at), h("div", { class: "muted" }, `v${r.revision}`)), h("td", {}, r.actor),
        h("td", {}, r.source, r.reason && h("div", { class: "muted" }, r.reason)),
        h("td", {}, r.changes.map((c) => h("div", { class: "mono", testid: "audit-change" }, `${c.op === "delete" ? "-" : c.old_value === null ? "+" : "~"} ${layerName(c.layer)}:${c.key} `,
          changeText(c)))))))];
}

/** A value cut to `n` characters, saying how long it was. */
const short = (v, n = 120) => {
  if (v === undefined) return "(unset)";
  const s = json(v);
  return s.length > n ? `${s.slice(0, n)}… (${s.length} chars)` : s;
};

/** What an audited change did: a flag's changed fields (not its whole definition), else old → new, cut short. */
function changeText(c) {
  if (c.op === "delete") return short(c.old_value);
  if (c.old_value === null) return short(c.new_value);
  const isObj = (v) => v && typeof v === "object" && !Array.isArray(v);
  if (layerName(c.layer).startsWith("flags/") && isObj(c.old_value) && isObj(c.new_value)) {
    const fields = [...new Set([...Object.keys(c.old_value), ...Object.keys(c.new_value)])]
      .filter((k) => json(c.old_value[k]) !== json(c.new_value[k]));
    return fields.map((k) => `${k}: ${short(c.old_value[k], 60)} → ${short(c.new_value[k], 60)}`).join("; ") || "(no change)";
  }
  return `${short(c.old_value)} → ${short(c.new_value)}`;
}

async function driftPage() {
  const scopes = await api("/scopes");
  const envs = [...new Set(scopes.services.map((s) => s.environment))];
  const services = [...new Set(scopes.services.map((s) => s.service))];
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const pick = (name, options, value) => {
    const el = h("select", { "data-f": name }, options.map((o) => h("option", { value: o }, o)));
    el.value = value || options[0] || "";
    return el;
  };
  const a = pick("a", envs, q.get("a")), b = pick("b", envs, q.get("b") || envs[1]), svc = pick("service", services, q.get("service"));
  const go = (ev) => { ev.preventDefault(); location.hash = `#/drift?a=${a.value}&b=${b.value}&service=${svc.value}`; };
  const parts = [h("h1", {}, "Environment drift"), h("form", { class: "row", onsubmit: go }, a, " vs ", b, " for ", svc, h("button", {}, "Compare"))];
  if (q.get("a") && q.get("b") && q.get("service")) {
    const d = await api(`/drift?${q}`);
    parts.push(h("table", { testid: "drift" }, h("tr", {}, h("th", {}, "key"), h("th", {}, d.a), h("th", {}, d.b)),
      d.rows.map((r) => h("tr", {}, h("td", { class: "mono" }, r.key), h("td", { class: "mono" }, r.only === "b" ? "(unset)" : json(r.a)),
        h("td", { class: "mono" }, r.only === "a" ? "(unset)" : json(r.b))))),
    h("p", { class: "muted" }, `${d.rows.length} difference(s)`));
  }
  return [...parts];
}

// -- routing and live updates ----------------------------------------------------------------------

// Draws a page once its data is in, unless the user moved on meanwhile or, for a live redraw,
// started editing: a slow answer never replaces a newer page or unsaved input.
async function draw(page, args, live) {
  const hash = location.hash;
  try {
    const nodes = await page(...args);
    if (location.hash !== hash || (live && editing) || nodes === undefined) return;
    show(nodes);
  } catch (err) {
    if (location.hash === hash && err.status !== 401) show(notice(err.message));
  }
}

// Redraws the current page now (after an action).
function redraw() {
  if (render) render(false);
}

const routes = [
  [/^#\/login$/, loginPage],
  [/^#\/service\/([^/]+)\/([^/?]+)$/, servicePage],
  [/^#\/flags$/, flagsIndex],
  [/^#\/flags\/([^/?]+)$/, flagsPage],
  [/^#\/flag\/([^/]+)\/([^/?]+)$/, flagEditor],
  [/^#\/changes$/, changesPage],
  [/^#\/change\/([0-9a-f]{8})$/, changePage],
  [/^#\/rollouts$/, rolloutsPage],
  [/^#\/fleet\/([^/]+)\/([^/?]+)$/, fleetPage],
  [/^#\/audit(\?.*)?$/, auditPage],
  [/^#\/drift(\?.*)?$/, driftPage],
  [/^(#\/?)?$/, homePage],
];

async function route() {
  editing = false;
  box = null;
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", hash.startsWith(a.getAttribute("href")) && a.getAttribute("href") !== "#/" || hash === a.getAttribute("href"));
  for (const [pattern, page] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    const args = m.slice(1).filter((x) => x !== undefined && !x.startsWith("?")).map(decodeURIComponent);
    render = page === loginPage ? null : (live) => draw(page, args, live);
    if (page !== loginPage && !me) {
      try { me = await api("/me"); } catch (err) { if (err.status !== 401) show(notice(err.message)); return; }
    }
    document.getElementById("who").textContent = me ? `${me.identity} · ${me.grant}` : "";
    await draw(page, args, false);
    return;
  }
  return [notice("No such page.")];
}

let source = null;

let retry = 1000;

function live() {
  const dot = document.getElementById("live");
  let timer = null;
  if (source) source.close();
  source = new EventSource(`${API}/events`);
  source.addEventListener("open", () => { dot.classList.add("on"); retry = 1000; });
  source.addEventListener("error", () => {
    dot.classList.remove("on");
    // The browser retries a dropped stream by itself, but not one the server refused (503, 429):
    // try again later, backing off to a minute.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(live, retry);
      retry = Math.min(retry * 2, 60000);
    }
  });
  source.addEventListener("denied", () => { source.close(); location.hash = "#/login"; });
  source.addEventListener("update", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { if (render && !editing && !document.getElementById("dialog").open) render(true); }, 50);
  });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  try {
    me = await api("/me");
    live();
  } catch (err) {
    if (err.status === 401) location.hash = "#/login";
  }
  route();
});

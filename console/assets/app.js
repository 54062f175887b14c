// inferq console: reads the API with the operator's token (kept in the
// tab's sessionStorage, sent as Authorization: Bearer, never in a URL),
// and follows the live figures over one server-sent stream.
"use strict";

const TOKEN = "inferq-token";
const main = document.getElementById("main");
let figures = {};      // model -> points
let models = [];       // GET /v1/models
let stream = null;     // AbortController of the figures stream
let viewStream = null; // AbortController of the open view's own stream (a batch's lines)

function token() { return sessionStorage.getItem(TOKEN) || ""; }

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) { signIn("Your token was refused: sign in again."); throw new Error("unauthorized"); }
  const text = await res.text();
  let doc = null;
  try { doc = JSON.parse(text); } catch (e) { doc = text; }
  if (!res.ok) throw new Error((doc && doc.error) || res.statusText);
  return doc;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}

function show(...nodes) { main.replaceChildren(...nodes); }
function fmt(n, d = 1) { return n === undefined || n === null || isNaN(n) ? "–" : Number(n).toFixed(d).replace(/\.0+$/, ""); }
function ms(s) { return s ? fmt(s * 1000, s < 0.01 ? 2 : 0) + " ms" : "–"; }
function when(t) { return t ? new Date(t).toLocaleTimeString() : "–"; }

function spark(values, label) {
  const w = 300, h = 42, max = Math.max(1e-9, ...values);
  const pts = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},${h - 2 - (v / max) * (h - 4)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts);
  svg.append(line);
  return svg;
}

// --- the figures stream: fetch, so that the token goes in a header ---

// sseData is the data of one server-sent event block (its lines without
// the blank line that ends it), as the HTML standard parses it: "data"
// lines joined by newlines, one space after the colon dropped; null when
// the block has no data (a comment, a keep-alive). The console's one SSE
// reader.
function sseData(block) {
  let data = null;
  for (const line of block.split(/\r\n|\r|\n/)) {
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field !== "data") continue;
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    data = data === null ? value : data + "\n" + value;
  }
  return data;
}

async function follow() {
  if (stream) return;
  stream = new AbortController();
  try {
    const res = await fetch("/v1/console/figures", { headers: token() ? { Authorization: "Bearer " + token() } : {}, signal: stream.signal });
    if (res.status === 401) { stream = null; signIn("Your token was refused: sign in again."); return; }
    if (!res.ok) throw new Error(res.statusText);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = sseData(block);
        if (data === null) continue;
        const msg = JSON.parse(data);
        for (const [m, pts] of Object.entries(msg.models)) {
          figures[m] = msg.full ? pts : (figures[m] || []).concat(pts).slice(-300);
        }
        if (location.hash === "" || location.hash === "#/") renderFigures();
      }
    }
  } catch (e) { /* closed, or the server went away: retried below */ }
  stream = null;
  if (!document.getElementById("nav").hidden) setTimeout(follow, 3000);
}

// --- views ---

function signIn(message) {
  document.getElementById("nav").hidden = true;
  if (stream) { stream.abort(); stream = null; }
  const input = el("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  const err = el("p", { class: "error", role: "alert" }, message || "");
  const form = el("form", { class: "signin", onsubmit: async ev => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN, input.value.trim());
    try { await start(); location.hash = "#/"; } catch (e) { err.textContent = e.message === "unauthorized" ? "That token was refused." : e.message; }
  } },
  el("h1", {}, "Sign in"),
  el("label", { for: "token" }, "API token"), input,
  el("button", { type: "submit", class: "primary" }, "Sign in"), err,
  el("p", { class: "muted" }, "The token stays in this tab (sessionStorage) and goes to the API in a header."));
  show(form);
  input.focus();
}

async function overview() {
  models = (await api("GET", "/v1/models")).models;
  const cards = models.map(m => {
    const v = m.versions.find(v => v.version === m.default_version) || m.versions[0] || {};
    const c = v.config || {};
    const workers = m.workers || [];
    const devices = [...new Set(workers.flatMap(w => (w.versions || []).map(x => x.device)))].join(", ") || "–";
    const problems = [...m.versions.filter(x => x.state !== "ready").map(x => `version ${x.version}: ${x.reason}`),
                      ...workers.filter(w => w.error).map(w => `${w.worker}: ${w.error}`)];
    const scale = workers.map(w => w.last_scale).filter(Boolean).sort((a, b) => a.at < b.at ? 1 : -1)[0];
    return el("section", { class: "card", "data-model": m.name, "aria-labelledby": "m-" + m.name },
      el("h2", { id: "m-" + m.name }, m.name, " ", el("span", { class: v.state === "ready" ? "ok" : "bad" }, v.state || "unavailable")),
      v.steps ? el("p", { class: "muted", "data-steps": m.name }, "pipeline: " + v.steps.map(st => `${st.name} (${st.model ? "model " + st.model : st.op ? st.op : "your code: " + st.external})`).join(" → "))
        : el("p", { class: "muted" }, `version ${m.default_version || "–"} · max batch ${c.max_batch_size} · delay ${c.max_queue_delay} · ${c.instances} instance(s) · on ${devices}`),
      v.batchable || v.steps ? null : el("p", { class: "muted" }, "not batched: " + (v.batching || "its signature does not allow it")),
      problems.length ? el("p", { class: "bad" }, problems.join("; ")) : null,
      el("div", { class: "stats", "data-live": m.name }),
      el("div", { "data-spark": m.name }),
      el("p", { class: "muted" }, `workers: ${workers.filter(w => !w.error).map(w => `${w.worker} ×${w.replicas}`).join(", ") || "none reporting"}`,
        scale ? ` · last scaled ${scale.from}→${scale.to}: ${scale.reason}` : ""),
      el("p", {}, el("a", { href: `#/jobs/${encodeURIComponent(m.name)}` }, "recent jobs"), " · ",
        el("a", { href: `#/dead-letters/${encodeURIComponent(m.name)}` }, "dead letters"),
        v.steps ? null : [" · ", el("a", { href: `#/traffic/${encodeURIComponent(m.name)}` }, "traffic")]));
  });
  show(el("h1", {}, "Models"), cards.length ? el("div", { class: "cards" }, cards) : el("p", {}, "No model is served, or this token may use none."));
  renderFigures();
}

function renderFigures() {
  for (const box of document.querySelectorAll("[data-live]")) {
    const m = box.getAttribute("data-live");
    const pts = figures[m] || [];
    const last = pts[pts.length - 1] || {};
    const finished = pts.reduce((n, p) => n + (p.done || 0), 0);
    // Latency and batch size: of the last sample that finished any job.
    const busy = [...pts].reverse().find(p => p.done > 0) || {};
    const rows = [...pts].reverse().find(p => p.batch_rows > 0) || {};
    const stat = (label, value, name) => el("div", { class: "stat" }, el("b", { "data-stat": name }, value), el("span", {}, label));
    box.replaceChildren(
      stat("waiting", fmt(last.pending, 0), "pending"), stat("in flight", fmt(last.in_flight, 0), "in_flight"),
      stat("finished (10 min)", fmt(finished, 0), "finished"),
      stat("jobs/s", fmt(last.succeeded), "rate"), stat("failed/s", fmt(last.failed), "failed"),
      stat("rows/batch", fmt(rows.batch_rows), "batch"),
      stat("p50", ms(busy.p50), "p50"), stat("p90", ms(busy.p90), "p90"), stat("p99", ms(busy.p99), "p99"));
    const sp = document.querySelector(`[data-spark="${CSS.escape(m)}"]`);
    if (sp) sp.replaceChildren(
      el("span", { class: "muted" }, "jobs/s, last 10 minutes"), spark(pts.map(p => p.succeeded + p.failed), m + " throughput"),
      el("span", { class: "muted" }, "queue depth"), spark(pts.map(p => p.pending + p.in_flight), m + " queue depth"));
  }
}

async function modelPicker(base, current) {
  if (!models.length) models = (await api("GET", "/v1/models")).models;
  return el("p", {}, "Model: ", ...models.map(m => [el("a", { href: `${base}/${encodeURIComponent(m.name)}`, "aria-current": m.name === current ? "page" : null }, m.name), " "]));
}

async function jobsView(model, status) {
  const picker = await modelPicker("#/jobs", model);
  if (!model) return show(el("h1", {}, "Recent jobs"), picker);
  const q = status ? `?status=${encodeURIComponent(status)}` : "";
  const list = (await api("GET", `/v1/console/models/${encodeURIComponent(model)}/jobs${q}`)).jobs;
  const filter = el("select", { id: "status", onchange: e => { location.hash = `#/jobs/${encodeURIComponent(model)}/${e.target.value}`; } },
    ["", "succeeded", "failed", "cancelled", "expired"].map(s => el("option", { value: s, selected: s === (status || "") }, s || "any status")));
  const rows = list.map(j => el("tr", {},
    el("td", {}, el("a", { href: `#/job/${j.id}` }, j.id)), el("td", { class: j.status === "succeeded" ? "ok" : "bad" }, j.status),
    el("td", {}, when(j.created_at)), el("td", { class: "num" }, j.finished_at ? ms((new Date(j.finished_at) - new Date(j.created_at)) / 1000) : "–"),
    el("td", { class: "num" }, j.attempts), el("td", {}, j.error || "")));
  show(el("h1", {}, `Recent jobs of ${model}`), picker, el("p", {}, el("label", { for: "status" }, "Status "), filter),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ["Job", "Status", "Accepted", "Took", "Attempts", "Error"].map(h => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))),
    list.length ? null : el("p", { class: "muted" }, "No finished job since the console's server started."));
}

async function jobView(id) {
  const j = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  const fields = ["id", "model", "model_version", "status", "created_at", "started_at", "finished_at", "attempts", "worker", "error", "batch_id", "replay_of"]
    .filter(k => j[k] !== undefined && j[k] !== "").map(k => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, String(j[k]))));
  const parts = [el("h1", {}, `Job ${j.id}`), el("table", {}, el("tbody", {}, fields))];
  if (j.status === "succeeded") {
    const r = await api("GET", `/v1/jobs/${encodeURIComponent(id)}/result`);
    parts.push(el("h2", {}, "Result"), el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Output", "Datatype", "Shape", "Values"].map(h => el("th", { scope: "col" }, h)))),
      el("tbody", {}, (r.outputs || []).map(o => el("tr", {}, el("td", {}, o.name), el("td", {}, o.datatype), el("td", {}, JSON.stringify(o.shape)),
        el("td", {}, el("pre", {}, JSON.stringify((o.data || []).flat(Infinity).slice(0, 64)) + ((o.data || []).flat(Infinity).length > 64 ? " …" : "")))))))));
  }
  show(...parts);
}

async function batchesView() {
  const list = (await api("GET", "/v1/batches")).batches;
  const rows = list.map(b => {
    const done = b.counts.succeeded + b.counts.failed + (b.counts.cancelled || 0);
    const pct = b.counts.total ? Math.round(100 * done / b.counts.total) : (b.status === "succeeded" ? 100 : 0);
    const bar = el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct, "aria-label": `batch ${b.id} progress` }, el("span"));
    bar.firstChild.style.width = pct + "%";
    const final = ["succeeded", "failed", "cancelled"].includes(b.status);
    return el("tr", {},
      el("td", {}, el("a", { href: `#/batch/${b.id}` }, b.id)), el("td", {}, b.model), el("td", { class: b.status === "failed" ? "bad" : "" }, b.status, b.error ? ` (${b.error})` : ""),
      el("td", {}, bar, el("span", { class: "muted" }, `${done} of ${b.counts.total} · ${b.counts.failed} failed`)),
      el("td", {}, final ? el("button", { type: "button", onclick: () => download(b.id) }, "Output")
        : el("button", { type: "button", onclick: async () => { await api("DELETE", `/v1/batches/${b.id}`); batchesView(); } }, "Cancel")));
  });
  show(el("h1", {}, "Batches"), el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Batch", "Model", "Status", "Progress", ""].map(h => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))),
    list.length ? null : el("p", { class: "muted" }, "No batch file yet."));
}

// batchView shows a batch and its most recent lines, as they finish: the
// followed output (?follow=1), the last RECENT of its lines kept.
const RECENT = 20;
async function batchView(id) {
  const b = await api("GET", `/v1/batches/${encodeURIComponent(id)}`);
  const fields = ["id", "model", "source", "status", "created_at", "queued_at", "finished_at", "jobs", "error"]
    .filter(k => b[k] !== undefined && b[k] !== "").map(k => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, String(b[k]))));
  const count = el("p", { class: "muted", "data-batch-lines": "0" }, "No line has finished yet.");
  const rows = el("tbody", {});
  show(el("h1", {}, `Batch ${b.id}`), el("table", {}, el("tbody", {}, fields)),
    el("h2", {}, "Recent lines"), count, el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Line", "custom_id", "Outcome"].map(h => el("th", { scope: "col" }, h)))), rows)));
  viewStream = new AbortController();
  const res = await fetch(`/v1/batches/${encodeURIComponent(id)}/output?follow=1`, {
    headers: token() ? { Authorization: "Bearer " + token() } : {}, signal: viewStream.signal });
  if (!res.ok) { count.textContent = (await res.json()).error; return; }
  const reader = res.body.getReader(), dec = new TextDecoder();
  let buf = "", n = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (!line.line) { count.textContent = line.error; continue; }
        n++;
        const outcome = line.error ? el("td", { class: "bad" }, line.error)
          : el("td", {}, (line.response.outputs || []).map(o => `${o.name} ${JSON.stringify((o.data || []).flat(Infinity).slice(0, 6))}`).join(" · "));
        rows.prepend(el("tr", { "data-line": line.line }, el("td", { class: "num" }, line.line), el("td", {}, JSON.stringify(line.custom_id)), outcome));
        while (rows.children.length > RECENT) rows.lastChild.remove();
      }
      count.dataset.batchLines = n;
      count.textContent = `${n} line(s) finished, newest first.`;
    }
  } catch (e) {
    if (e.name !== "AbortError") count.textContent = e.message;
  }
}

// trafficView shows a model's traffic split (shares of unpinned jobs by
// version, shadow versions), how its shadows agree with the answering
// version, and a form to change the split, applied after a confirmation.
async function trafficView(model) {
  const path = `/v1/models/${encodeURIComponent(model)}/traffic`;
  const tr = await api("GET", path);
  let mon = { shadow: [] };
  try { mon = await api("GET", `/v1/models/${encodeURIComponent(model)}/monitoring`); } catch (e) { /* no statistics here */ }
  const status = el("p", { role: "status", "data-traffic-status": "" });
  const shares = {}, shadows = {};
  const rows = tr.versions.map(v => {
    shares[v] = el("input", { type: "number", min: 0, step: 1, id: `share-${v}`, "data-share": v, value: String((tr.traffic || {})[v] || 0), "aria-label": `share of version ${v}` });
    shadows[v] = el("input", { type: "checkbox", id: `shadow-${v}`, "data-shadow": v, "aria-label": `version ${v} is a shadow` });
    shadows[v].checked = (tr.shadow || []).includes(v);
    return el("tr", {}, el("td", {}, v, v === tr.default_version ? el("span", { class: "muted" }, " (default)") : ""), el("td", {}, shares[v]), el("td", {}, shadows[v]));
  });
  const read = () => {
    const split = { traffic: {}, shadow: [] };
    for (const v of tr.versions) {
      const n = parseInt(shares[v].value || "0", 10);
      if (n > 0) split.traffic[v] = n;
      if (shadows[v].checked) split.shadow.push(v);
    }
    return split;
  };
  const confirmBox = el("div", { class: "confirm", hidden: true });
  const apply = el("button", { type: "button", class: "primary", "data-apply": "", onclick: () => {
    const split = read();
    const total = Object.values(split.traffic).reduce((a, b) => a + b, 0);
    const said = Object.entries(split.traffic).map(([v, n]) => `version ${v}: ${Math.round(1000 * n / total) / 10} %`).join(", ") || "the default version for all";
    confirmBox.replaceChildren(
      el("p", {}, `Send unpinned jobs to ${said}${split.shadow.length ? "; shadow " + split.shadow.join(", ") : ""}? Every API process follows within seconds.`),
      el("button", { type: "button", class: "primary", "data-confirm": "", onclick: async () => {
        confirmBox.hidden = true;
        try {
          await api("PUT", path, split);
          status.textContent = "Applied.";
          setTimeout(() => { if (location.hash === `#/traffic/${encodeURIComponent(model)}`) trafficView(model); }, 800);
        } catch (e) { status.textContent = e.message; }
      } }, "Confirm"),
      " ", el("button", { type: "button", onclick: () => { confirmBox.hidden = true; } }, "Cancel"));
    confirmBox.hidden = false;
  } }, "Apply…");
  const pct = x => x === undefined || x === null ? "–" : (100 * x).toFixed(2) + " %";
  const agreement = (mon.shadow || []).map(sh => el("tr", { "data-agreement": sh.version },
    el("td", {}, sh.version), el("td", {}, sh.against),
    ...["5m", "1h", "24h"].map(w => { const a = (sh.windows || {})[w] || {}; return el("td", {}, `${pct(a.label_agreement)}${a.mean_abs_diff !== undefined ? " · Δ " + fmt(a.mean_abs_diff) : ""} (${a.jobs || 0} jobs)`); })));
  show(el("h1", {}, `Traffic of ${model}`),
    el("p", { class: "muted" }, tr.source === "api" ? `set at run time, ${when(tr.updated_at)}` : tr.source === "config" ? "from config.yaml" : "no split: the default version answers every job that names none"),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ["Version", "Share", "Shadow"].map(h => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))),
    el("p", {}, apply), confirmBox, status,
    el("h2", {}, "Shadow agreement"),
    agreement.length ? el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ["Shadow", "Against", "5 min", "1 hour", "24 hours"].map(h => el("th", { scope: "col" }, h)))), el("tbody", {}, agreement)))
      : el("p", { class: "muted" }, "No shadow run compared yet."));
}

async function download(id) {
  const res = await fetch(`/v1/batches/${id}/output`, { headers: token() ? { Authorization: "Bearer " + token() } : {} });
  const url = URL.createObjectURL(await res.blob());
  const a = el("a", { href: url, download: `${id}.jsonl` });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function deadLettersView(model) {
  const picker = await modelPicker("#/dead-letters", model);
  if (!model) return show(el("h1", {}, "Dead letters"), picker);
  const list = (await api("GET", `/v1/models/${encodeURIComponent(model)}/dead-letters`)).dead_letters || [];
  const note = el("p", { role: "status" });
  const rows = list.map(d => el("tr", {},
    el("td", {}, el("a", { href: `#/job/${d.job_id}` }, d.job_id)), el("td", {}, when(d.failed_at)), el("td", { class: "num" }, d.attempts),
    el("td", {}, d.error),
    el("td", {}, el("button", { type: "button", "data-replay": d.job_id, onclick: async e => {
      e.target.disabled = true;
      try {
        const rec = await api("POST", `/v1/models/${encodeURIComponent(model)}/dead-letters/${d.job_id}/replay`);
        note.replaceChildren("Replayed as ", el("a", { href: `#/job/${rec.id}` }, rec.id));
      } catch (err) { note.textContent = err.message; e.target.disabled = false; }
    } }, "Replay"))));
  show(el("h1", {}, `Dead letters of ${model}`), picker, note, el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Job", "Failed", "Attempts", "Why", ""].map(h => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))),
    list.length ? null : el("p", { class: "muted" }, "No failed job is kept for this model."));
}

async function route() {
  const [, view, a, b] = (location.hash || "#/").slice(1).split("/").map(decodeURIComponent);
  if (viewStream) { viewStream.abort(); viewStream = null; }
  try {
    switch (view) {
      case "": case undefined: return await overview();
      case "jobs": return await jobsView(a, b);
      case "job": return await jobView(a);
      case "batches": return await batchesView();
      case "batch": return await batchView(a);
      case "traffic": return await trafficView(a);
      case "dead-letters": return await deadLettersView(a);
      case "signin": return signIn();
      default: show(el("p", {}, "No such page. ", el("a", { href: "#/" }, "Models")));
    }
  } catch (e) {
    if (e.message !== "unauthorized") show(el("p", { class: "error", role: "alert" }, e.message), el("p", {}, el("a", { href: "#/" }, "Models")));
  }
}

async function start() {
  await api("GET", "/v1/models"); // refused without a good token
  document.getElementById("nav").hidden = false;
  follow();
  await route();
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN);
  signIn("Signed out.");
});
window.addEventListener("hashchange", () => { if (!document.getElementById("nav").hidden) route(); });
start().catch(() => {});

// The status page's one script: every 2 s it reads /admin/status/history (the last 15 minutes
// of samples the process keeps, money held, the worker's role, the quarantine), /admin/guest,
// /readyz and /metrics (the browser resends the page's credentials with each
// same-origin request), and writes what it read into the page: charts drawn as inline SVG,
// tables. A figure the service does not report shows as "—".
"use strict";

const REFRESH_MS = 2000;
const WINDOW_MS = 15 * 60 * 1000;
const SHORT_ID = 12;
const SVG = "http://www.w3.org/2000/svg";
const CHART_W = 300;
const CHART_H = 80;

// Prometheus text → [{ name, labels, value }].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2];
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

// The sum of the samples of `name` whose labels include `wanted`; null when there are none.
function sum(samples, name, wanted = {}) {
  let total = null;
  for (const sample of samples) {
    if (sample.name !== name) continue;
    if (!Object.entries(wanted).every(([k, v]) => sample.labels[k] === v)) continue;
    total = (total || 0) + sample.value;
  }
  return total;
}

function show(id, value) {
  const element = document.getElementById(id);
  if (element) element.textContent = value === null || value === undefined ? "—" : String(value);
}

function number(value, digits = 0) {
  return value === null || value === undefined
    ? null
    : value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

// A version id as its first 12 characters, the whole id on hover and behind a copy button.
function showVersion(id, version) {
  const cell = document.getElementById(id);
  if (!version) {
    cell.textContent = id === "candidate" ? "none" : "—";
    return;
  }
  if (cell.dataset.version === version) return;
  cell.dataset.version = version;
  const code = document.createElement("code");
  code.textContent = version.length > SHORT_ID ? `${version.slice(0, SHORT_ID)}…` : version;
  code.title = version;
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "copy";
  copy.setAttribute("aria-label", `Copy the full version id ${version}`);
  copy.addEventListener("click", () => copyText(version, copy));
  cell.replaceChildren(code, copy);
}

// Every 64-hex-digit version id in `text` cut to its first 12 digits.
function shortIds(text) {
  return (text || "").replace(/\b([0-9a-f]{12})[0-9a-f]{52}\b/g, "$1…");
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "copied";
  } catch {
    // No clipboard (an insecure origin): select the full id for the operator to copy.
    const code = button.previousElementSibling;
    code.textContent = text;
    window.getSelection().selectAllChildren(code);
  }
}

// One series from the samples: [{ fromMs, atMs, value }], a counter's rate per second over the
// interval between neighbouring samples, or a gauge's value at the interval's end.
function series(samples, pick) {
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const [before, after] = [samples[i - 1], samples[i]];
    const value = pick(before, after, (after.at_ms - before.at_ms) / 1000);
    if (value !== null && Number.isFinite(value)) {
      points.push({ fromMs: before.at_ms, atMs: after.at_ms, value });
    }
  }
  return points;
}

// A counter's rate; a counter that went down (the process restarted) counts from zero.
const rate = (field) => (before, after, seconds) => {
  if (seconds <= 0) return null;
  const delta = after[field] - before[field];
  return (delta >= 0 ? delta : after[field]) / seconds;
};

const CHARTS = [
  { id: "chart-requests", digits: 1, pick: rate("transfer_requests") },
  { id: "chart-accepted", digits: 1, pick: rate("accepted") },
  {
    id: "chart-refused",
    digits: 1,
    pick: (b, a, s) => {
      const decided = rate("decided")(b, a, s);
      const accepted = rate("accepted")(b, a, s);
      return decided === null || accepted === null ? null : Math.max(0, decided - accepted);
    },
  },
  { id: "chart-settled", digits: 1, pick: rate("settled") },
  { id: "chart-lag", digits: 3, pick: (_b, after) => after.lag_seconds },
  {
    id: "chart-guest",
    digits: 2,
    pick: (before, after) => {
      const calls = after.guest_calls - before.guest_calls;
      return calls > 0 ? ((after.guest_seconds_sum - before.guest_seconds_sum) / calls) * 1000 : null;
    },
  },
];

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

// The span a chart shows: the last 15 minutes, or less when the process is younger.
function span(points, nowMs) {
  const startMs = Math.max(nowMs - WINDOW_MS, points.length ? points[0].fromMs : nowMs - WINDOW_MS);
  const seconds = Math.max(1, Math.round((nowMs - startMs) / 1000));
  return { startMs, label: seconds >= 120 ? `−${Math.round(seconds / 60)} min` : `−${seconds} s` };
}

// Draws `points` as steps (each value held over its interval) across `span`, scaled to their
// largest value, in place of the figure's previous drawing.
function drawChart(figure, points, digits, nowMs) {
  const highest = Math.max(...points.map((p) => p.value), 0);
  const top = highest || 1;
  const { startMs, label } = span(points, nowMs);
  const width = Math.max(1, nowMs - startMs);
  const x = (atMs) => (((Math.max(atMs, startMs) - startMs) / width) * CHART_W).toFixed(1);
  const y = (value) => (CHART_H - (value / top) * (CHART_H - 4)).toFixed(1);
  const drawing = svg("svg", {
    viewBox: `0 0 ${CHART_W} ${CHART_H}`,
    preserveAspectRatio: "none",
    role: "img",
    "data-points": String(points.length),
    "data-max": String(highest),
  });
  const caption = figure.querySelector("figcaption").firstChild.textContent.trim();
  drawing.setAttribute("aria-label", `${caption} over the last ${label.slice(1)}, ${points.length} points`);
  drawing.append(svg("line", { class: "axis", x1: 0, y1: CHART_H, x2: CHART_W, y2: CHART_H }));
  const line = points.flatMap((p) => [`${x(p.fromMs)},${y(p.value)}`, `${x(p.atMs)},${y(p.value)}`]).join(" ");
  if (points.length > 0) {
    const first = x(points[0].fromMs);
    const last = x(points[points.length - 1].atMs);
    drawing.append(svg("polygon", { class: "area", points: `${first},${CHART_H} ${line} ${last},${CHART_H}` }));
    drawing.append(svg("polyline", { class: "line", points: line }));
  }
  const scale = document.createElement("div");
  scale.className = "scale";
  const oldest = document.createElement("span");
  oldest.textContent = label;
  const peak = document.createElement("span");
  peak.textContent = `max ${number(top, digits)}`;
  scale.append(oldest, peak);
  for (const old of figure.querySelectorAll("svg, .scale")) old.remove();
  figure.append(drawing, scale);
  const now = points.length ? points[points.length - 1].value : null;
  figure.querySelector(".now").textContent = now === null ? "—" : number(now, digits);
}

function showHistory(history) {
  const samples = history.samples || [];
  const nowMs = samples.length ? samples[samples.length - 1].at_ms : Date.now();
  for (const chart of CHARTS) {
    drawChart(document.getElementById(chart.id), series(samples, chart.pick), chart.digits, nowMs);
  }
  const held = document.getElementById("held");
  held.replaceChildren();
  for (const money of history.held || []) {
    const item = document.createElement("li");
    item.textContent = `${money.amount} ${money.currency}`;
    held.append(item);
  }
  if (held.children.length === 0) held.append(Object.assign(document.createElement("li"), { textContent: "none" }));
  const worker = document.getElementById("worker-state");
  worker.textContent = history.worker || "not run here";
  worker.className = history.worker || "";
}

async function json(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  // /readyz answers 503 with the same body when something is down.
  if (!response.ok && response.status !== 503) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function showGuest(guest, samples) {
  const active = guest.active || guest.serving;
  showVersion("active", active);
  showVersion("serving", guest.serving);
  const live = (guest.history || []).find(
    (entry) => entry.version === active && ["activate", "rollback"].includes(entry.action));
  show("live-since", live ? new Date(live.activated_at).toISOString() : null);
  const candidate = guest.candidate;
  showVersion("candidate", candidate ? candidate.version : null);
  show("candidate-mode", candidate ? candidate.mode : null);
  const version = candidate ? { version: candidate.version } : null;
  const share = version ? sum(samples, "transferd_guest_canary_share", version) : null;
  show("canary-share", share === null ? null : `${Math.round(share * 100)}%`);
  show("shadow-runs", version ? number(sum(samples, "transferd_shadow_runs_total", version)) : null);
  show("shadow-differences",
    version ? number(sum(samples, "transferd_shadow_differences_total", version)) : null);
}

// Rows of cells into a table body; `empty` when there are none.
function fillRows(id, rows, empty) {
  const body = document.getElementById(id);
  body.replaceChildren();
  for (const cells of rows) {
    const row = body.insertRow();
    for (const cell of cells) {
      const element = row.insertCell();
      element.textContent = typeof cell === "object" ? cell.text : cell;
      if (typeof cell === "object" && cell.className) element.className = cell.className;
      if (typeof cell === "object" && cell.title) element.title = cell.title;
    }
  }
  if (rows.length === 0) body.insertRow().insertCell().textContent = empty;
}

function showDifferences(report) {
  const differences = (report && report.replica_stats && report.replica_stats.recent_differences) || [];
  fillRows("difference-rows", differences.slice(-5).reverse().map((difference) => [
    difference.transaction_id,
    `active ${JSON.stringify(difference.active)}`,
    `candidate ${JSON.stringify(difference.candidate)}`,
  ]), "none");
}

function showQuarantine(quarantine) {
  show("quarantined", quarantine ? number(quarantine.open) : null);
  fillRows("quarantine-rows", ((quarantine && quarantine.latest) || []).map((message) => [
    `${message.partition}/${message.offset}`,
    message.quarantined_at,
    message.error,
  ]), "none");
}

function showDependencies(readiness) {
  const readinessText = document.getElementById("readiness");
  readinessText.textContent = readiness.status || (readiness.ready ? "ok" : "unready");
  readinessText.className = readiness.status === "ok" ? "up" : readiness.ready ? "degraded" : "down";
  fillRows("dependency-rows", Object.entries(readiness.checks || {}).map(([name, check]) => [
    name,
    { text: check.ready ? "up" : "down", className: check.ready ? "up" : "down" },
    { text: shortIds(check.detail), title: check.detail },
  ]), "—");
}

function showTotals(samples) {
  show("transfer-requests", number(sum(samples, "transferd_http_requests_total", { route: "create_transfer" })));
  show("settled", number(sum(samples, "transferd_settled_transfers_total")));
  show("in-doubt", number(sum(samples, "transferd_publishes_in_doubt_total")));
  show("lag-messages", number(sum(samples, "transferd_settlement_lag_messages")));
  show("holds", number(sum(samples, "transferd_holds_outstanding")));
}

async function refresh() {
  try {
    const [history, guest, readiness, metricsText] = await Promise.all([
      json("/admin/status/history"),
      json("/admin/guest"),
      json("/readyz"),
      fetch("/metrics", { cache: "no-store" }).then((r) => r.text()),
    ]);
    const samples = parseMetrics(metricsText);
    showHistory(history);
    showGuest(guest, samples);
    showDependencies(readiness);
    showTotals(samples);
    showQuarantine(history.quarantine);
    const candidate = guest.candidate;
    showDifferences(candidate && candidate.mode === "shadow"
      ? await json(`/admin/guest/${encodeURIComponent(candidate.version)}/shadow`)
      : null);
    show("updated", new Date().toISOString());
    show("error", "");
  } catch (error) {
    show("error", `(${error.message})`);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);

// The status page's one script: every 2 s it reads /admin/guest, /readyz and /metrics (the
// browser resends the page's credentials with each same-origin request), and writes what it
// read into the page. Rates are the difference between two readings of a counter over the
// time between them. A figure the service does not report shows as "—".
"use strict";

const REFRESH_MS = 2000;
let previous = null; // { atMs, counters } of the last reading

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
  return value === null ? null : value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

function rate(name, now, atMs) {
  if (!previous || now[name] === null || previous.counters[name] === null) return null;
  const seconds = (atMs - previous.atMs) / 1000;
  return seconds > 0 ? Math.max(0, (now[name] - previous.counters[name]) / seconds) : null;
}

async function json(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  // /readyz answers 503 with the same body when something is down.
  if (!response.ok && response.status !== 503) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function showGuest(guest, samples) {
  show("active", guest.active || guest.serving);
  show("serving", guest.serving);
  const active = guest.active || guest.serving;
  const live = (guest.history || []).find(
    (entry) => entry.version === active && ["activate", "rollback"].includes(entry.action));
  show("live-since", live ? new Date(live.activated_at).toISOString() : null);
  const candidate = guest.candidate;
  show("candidate", candidate ? candidate.version : "none");
  show("candidate-mode", candidate ? candidate.mode : null);
  const version = candidate ? { version: candidate.version } : null;
  const share = version ? sum(samples, "transferd_guest_canary_share", version) : null;
  show("canary-share", share === null ? null : `${Math.round(share * 100)}%`);
  show("shadow-runs", version ? number(sum(samples, "transferd_shadow_runs_total", version)) : null);
  show("shadow-differences",
    version ? number(sum(samples, "transferd_shadow_differences_total", version)) : null);
}

function showDifferences(report) {
  const rows = document.getElementById("difference-rows");
  const differences = (report && report.replica_stats && report.replica_stats.recent_differences) || [];
  rows.replaceChildren();
  if (differences.length === 0) {
    const row = rows.insertRow();
    row.insertCell().textContent = "none";
    return;
  }
  for (const difference of differences.slice(-5).reverse()) {
    const row = rows.insertRow();
    row.insertCell().textContent = difference.transaction_id;
    row.insertCell().textContent = `active ${JSON.stringify(difference.active)}`;
    row.insertCell().textContent = `candidate ${JSON.stringify(difference.candidate)}`;
  }
}

function showDependencies(readiness) {
  const rows = document.getElementById("dependency-rows");
  rows.replaceChildren();
  for (const [name, check] of Object.entries(readiness.checks || {})) {
    const row = rows.insertRow();
    row.insertCell().textContent = name;
    const state = row.insertCell();
    state.textContent = check.ready ? "up" : "down";
    state.className = check.ready ? "up" : "down";
    row.insertCell().textContent = check.detail;
  }
  if (rows.rows.length === 0) rows.insertRow().insertCell().textContent = "—";
}

function showTraffic(samples, atMs) {
  const route = { route: "create_transfer" };
  const counters = {
    requests: sum(samples, "transferd_http_requests_total", route),
    accepted: sum(samples, "transferd_guest_calls_total", { outcome: "accepted" }),
    decided: sum(samples, "transferd_guest_calls_total"),
    settled: sum(samples, "transferd_settled_transfers_total"),
  };
  show("transfer-requests", number(counters.requests));
  show("request-rate", number(rate("requests", counters, atMs), 1));
  show("accepted-rate", number(rate("accepted", counters, atMs), 1));
  const decidedRate = rate("decided", counters, atMs);
  const acceptedRate = rate("accepted", counters, atMs);
  show("refused-rate",
    decidedRate === null || acceptedRate === null ? null : number(decidedRate - acceptedRate, 1));
  show("settled", number(counters.settled));
  show("settled-rate", number(rate("settled", counters, atMs), 1));
  show("in-doubt", number(sum(samples, "transferd_publishes_in_doubt_total")));
  show("lag-messages", number(sum(samples, "transferd_settlement_lag_messages")));
  show("lag-seconds", number(sum(samples, "transferd_settlement_lag_seconds"), 3));
  show("holds", number(sum(samples, "transferd_holds_outstanding")));
  const held = samples
    .filter((s) => s.name === "transferd_holds_outstanding_minor" && s.value !== 0)
    .map((s) => `${s.labels.currency} ${number(s.value)}`);
  const holds = sum(samples, "transferd_holds_outstanding");
  show("held-minor", held.length ? held.join(", ") : holds === null ? null : "0");
  show("quarantined", number(sum(samples, "transferd_settlement_quarantine_open")));
  return counters;
}

async function refresh() {
  try {
    const [guest, readiness, metricsText] = await Promise.all([
      json("/admin/guest"),
      json("/readyz"),
      fetch("/metrics", { cache: "no-store" }).then((r) => r.text()),
    ]);
    const samples = parseMetrics(metricsText);
    const atMs = Date.now();
    showGuest(guest, samples);
    showDependencies(readiness);
    const counters = showTraffic(samples, atMs);
    previous = { atMs, counters };
    const candidate = guest.candidate;
    showDifferences(candidate && candidate.mode === "shadow"
      ? await json(`/admin/guest/${encodeURIComponent(candidate.version)}/shadow`)
      : null);
    show("updated", new Date(atMs).toISOString());
    show("error", "");
  } catch (error) {
    show("error", `(${error.message})`);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);

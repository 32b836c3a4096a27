// Opens transferd's status page in Debian's headless Chromium and checks what an on-call
// engineer would look at. Driven by tests/e2e/status_page.rs, which starts transferd and makes
// traffic; this script only reads the page.
//
//   node status.mjs <base url> <admin token> <screenshot path or ""> <mode>
//
// mode "first": logs in with HTTP Basic credentials (as a person's browser would, after the
//   page's 401 prompt), waits until the page shows the active version, every dependency up and
//   a transfer count, and prints the figures it read as one JSON line.
// mode "moved <count>": waits until the page's transfer count exceeds <count> without being
//   reloaded (the page refreshes itself) and its request-rate chart draws a rate above zero,
//   then takes the screenshot, if asked, and prints.
// mode "held <text>": waits until the money held reads <text> (e.g. "12.50 USD"), and prints.
// Everything is bounded: 30 s per wait.
import { chromium } from "playwright-core";

const [baseUrl, adminToken, screenshotPath, mode, after] = process.argv.slice(2);
const WAIT_MS = 30_000;

function fail(message) {
  console.error(`status page: ${message}`);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const context = await browser.newContext({
    httpCredentials: { username: "oncall", password: adminToken },
    viewport: { width: 1280, height: 860 },
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  const response = await page.goto(`${baseUrl}/admin/status`, { timeout: WAIT_MS });
  if (!response || response.status() !== 200) fail(`answered ${response && response.status()}`);

  const text = async (id) => (await page.locator(`#${id}`).textContent()).trim();
  const count = async () => Number((await text("transfer-requests")).replace(/,/g, ""));
  // The active version as a short id, the whole id in its title.
  await page.waitForFunction(
    () => (document.querySelector("#active code")?.title || "").length === 64,
    null, { timeout: WAIT_MS });
  await page.waitForFunction(
    () => document.querySelectorAll("#dependency-rows td.up").length >= 4,
    null, { timeout: WAIT_MS });
  if (mode === "moved") {
    const before = Number(after);
    await page.waitForFunction(
      (n) => Number(document.querySelector("#transfer-requests").textContent.replace(/,/g, "")) > n,
      before, { timeout: WAIT_MS });
    // The chart of the last 15 minutes draws the new requests' rate.
    await page.waitForFunction(
      () => {
        const figure = document.querySelector("#chart-requests");
        const drawing = figure.querySelector("svg");
        const points = Number(drawing?.dataset.points || 0);
        return points >= 1 && Number(drawing.dataset.max) > 0 && figure.querySelector("polyline") !== null;
      },
      null, { timeout: WAIT_MS });
  } else if (mode === "held") {
    await page.waitForFunction(
      (held) => document.querySelector("#held").textContent.trim() === held,
      after, { timeout: WAIT_MS });
  } else {
    await page.waitForFunction(
      () => /^[0-9,]+$/.test(document.querySelector("#transfer-requests").textContent.trim()),
      null, { timeout: WAIT_MS });
  }
  if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
  const dependencies = await page.locator("#dependency-rows tr").evaluateAll(
    (rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent.trim())));
  if (errors.length) fail(`script errors: ${errors.join("; ")}`);
  const charts = await page.locator("figure.chart").evaluateAll((figures) => Object.fromEntries(
    figures.map((figure) => [figure.id, {
      points: Number(figure.querySelector("svg")?.dataset.points || 0),
      max: Number(figure.querySelector("svg")?.dataset.max || 0),
      now: figure.querySelector(".now").textContent.trim(),
    }])));
  console.log(JSON.stringify({
    active: await page.locator("#active code").textContent(),
    active_title: await page.locator("#active code").getAttribute("title"),
    copy_label: await page.locator("#active button.copy").getAttribute("aria-label"),
    readiness: await text("readiness"),
    worker: await text("worker-state"),
    held: await text("held"),
    quarantined: await text("quarantined"),
    charts,
    candidate: await text("candidate"),
    transfer_requests: await count(),
    settled: await text("settled"),
    holds: await text("holds"),
    lag_messages: await text("lag-messages"),
    dependencies,
  }));
} finally {
  await browser.close();
}

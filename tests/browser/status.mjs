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
//   reloaded (the page refreshes itself), then takes the screenshot, if asked, and prints.
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
  await page.waitForFunction(
    () => document.querySelector("#active").textContent.trim().length === 64,
    null, { timeout: WAIT_MS });
  await page.waitForFunction(
    () => document.querySelectorAll("#dependency-rows td.up").length >= 4,
    null, { timeout: WAIT_MS });
  if (mode === "moved") {
    const before = Number(after);
    await page.waitForFunction(
      (n) => Number(document.querySelector("#transfer-requests").textContent.replace(/,/g, "")) > n,
      before, { timeout: WAIT_MS });
    // A second reading gives a rate.
    await page.waitForFunction(
      () => document.querySelector("#request-rate").textContent.trim() !== "—",
      null, { timeout: WAIT_MS });
  } else {
    await page.waitForFunction(
      () => /^[0-9,]+$/.test(document.querySelector("#transfer-requests").textContent.trim()),
      null, { timeout: WAIT_MS });
  }
  if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
  const dependencies = await page.locator("#dependency-rows tr").evaluateAll(
    (rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent.trim())));
  if (errors.length) fail(`script errors: ${errors.join("; ")}`);
  console.log(JSON.stringify({
    active: await text("active"),
    candidate: await text("candidate"),
    transfer_requests: await count(),
    request_rate: await text("request-rate"),
    settled: await text("settled"),
    holds: await text("holds"),
    lag_messages: await text("lag-messages"),
    dependencies,
  }));
} finally {
  await browser.close();
}

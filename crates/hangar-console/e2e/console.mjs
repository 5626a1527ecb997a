// The console's end-to-end script: drives Debian's Chromium through
// playwright-core against a real `hangar serve`, doing what an operator does
// (see "Done when" in the console's issue). It is run by the `hangar`
// crate's tests/console.rs, which starts the server, deploys the slow agent,
// packs the archive to drop and runs the webhook receiver, and passes them
// here in the environment:
//   HANGAR_URL, HANGAR_KEY      the server and its admin key
//   ARCHIVE                     a .tar.gz of the streaming agent, to drop
//   FOLDER                      an agent's folder, to deploy as a folder
//   SLOW_AGENT_ID               a running agent whose jobs sleep (to cancel)
//   ECHO_AGENT_ID, ECHO_INSTANCE_ID, ORG_ID
//                               a running stdin agent printing a line per
//                               line it reads (to fill the log with 10k lines)
//   RECEIVER_URL                a webhook receiver; GET RECEIVER_URL/received
//                               lists the webhook-id of each request it took
//   SHOTS                       where screenshots are written
//   CHROMIUM                    the browser (default /usr/bin/chromium)
// Every wait has a generous deadline and no step asserts how long anything
// took: machines are noisy. It exits non-zero on the first failed step.

import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { basename, join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env("HANGAR_URL");
const KEY = env("HANGAR_KEY");
const ARCHIVE = env("ARCHIVE");
const SLOW = env("SLOW_AGENT_ID");
const FOLDER = env("FOLDER");
const ECHO = env("ECHO_AGENT_ID");
const ECHO_INSTANCE = env("ECHO_INSTANCE_ID");
const ORG = env("ORG_ID");
const RECEIVER = env("RECEIVER_URL");
const SHOTS = env("SHOTS");
mkdirSync(SHOTS, { recursive: true });

const MINUTE = 60_000;
let shot = 0;
const step = (text) => console.log(`step: ${text}`);

async function api(method, path, body, key = KEY) {
  const res = await fetch(`${URL_}${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json?.data ?? json;
}

/** Polls `fn` until it answers something truthy, or fails after `ms`. */
async function until(what, fn, ms = 2 * MINUTE, every = 250) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}: ${last?.message ?? last}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
page.on("console", (msg) => { if (msg.type() === "error") console.log(`browser console: ${msg.text()}`); });

async function snap(name) {
  const path = join(SHOTS, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

async function go(hash, ready) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  if (ready) await page.waitForSelector(ready, { timeout: MINUTE });
}

try {
  step("a browser asking for / lands on the console's sign-in");
  const first = await page.goto(`${URL_}/`);
  if (!page.url().startsWith(`${URL_}/console`)) throw new Error(`/ went to ${page.url()}`);
  if (first.status() !== 200) throw new Error(`console answered ${first.status()}`);
  await page.waitForSelector("#api-key");
  const load = await page.evaluate(() => {
    const entries = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    return { bytes: entries.reduce((a, e) => a + (e.transferSize || e.encodedBodySize || 0), 0), files: entries.length, paint: paint?.startTime };
  });
  console.log(`figure: first load ${load.files} files, ${load.bytes} bytes transferred, first contentful paint ${load.paint?.toFixed(0)} ms`);
  if (load.bytes >= 300 * 1024) throw new Error(`first load transferred ${load.bytes} bytes`);
  await snap("signin");

  step("a wrong key is refused; the admin key signs in");
  await page.fill("#api-key", "hgr_notakey");
  await page.click("button[type=submit]");
  await page.waitForSelector("#signin-error:not(:empty)");
  await page.fill("#api-key", KEY);
  await page.click("button[type=submit]");
  await page.waitForSelector("#agents-table table, #agents-table .empty");
  const stored = await page.evaluate(() => ({ session: sessionStorage.getItem("hangar.apiKey"), local: localStorage.length, cookie: document.cookie, url: location.href }));
  if (stored.session !== KEY || stored.local !== 0 || stored.cookie !== "" || stored.url.includes(KEY)) throw new Error(`key kept wrongly: ${JSON.stringify(stored)}`);
  await snap("agents");

  step("a webhook endpoint to the test's receiver (so later events are delivered)");
  await go("#/webhooks", "#webhook-url");
  await page.fill("#webhook-url", `${RECEIVER}/hook`);
  await page.click("form button[type=submit]");
  await page.waitForSelector("#webhook-secret code");
  const secret = await page.textContent("#webhook-secret code");
  if (!secret.startsWith("whsec_")) throw new Error(`secret shown: ${secret}`);
  await snap("webhooks");

  step("deploy by dropping an archive onto the agents page");
  await go("#/agents", "#drop-zone");
  const name = basename(ARCHIVE).replace(/\.tar\.gz$/, "");
  const bytes = readFileSync(ARCHIVE).toString("base64");
  const dataTransfer = await page.evaluateHandle(([b64, file]) => {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([raw], file, { type: "application/gzip" }));
    return dt;
  }, [bytes, basename(ARCHIVE)]);
  await page.dispatchEvent("#drop-zone", "drop", { dataTransfer });
  step("watch the build log");
  await page.waitForFunction(() => (document.querySelector("#build-log")?.textContent ?? "").trim().split("\n").length >= 1 && document.querySelector("#build-log").textContent.trim() !== "", null, { timeout: 5 * MINUTE });
  await snap("deploy-building");
  step("see the agent running");
  await page.waitForFunction(() => /is running|failed/.test(document.querySelector("#deploy-outcome")?.textContent ?? ""), null, { timeout: 5 * MINUTE });
  const outcome = await page.textContent("#deploy-outcome");
  if (!outcome.includes("is running")) throw new Error(`deploy: ${outcome}; log: ${await page.textContent("#build-log")}`);
  const buildLog = await page.textContent("#build-log");
  console.log(`build log in the page: ${buildLog.trim().split("\n").length} lines`);
  await snap("deploy-running");
  const agent = (await api("GET", "/v1/agents?limit=100")).find((a) => a.name === name);
  if (!agent) throw new Error(`no agent ${name}`);
  await page.waitForFunction((id) => {
    const link = document.querySelector(`#agents-table a[href="#/agents/${id}"]`);
    return link && /running/i.test(link.closest("tr").textContent);
  }, agent.id, { timeout: MINUTE });
  await snap("agents-running");

  step("deploy a folder: packed in the page, uploaded, built, running");
  await page.setInputFiles("#folder", FOLDER);
  const folderName = basename(FOLDER);
  await page.waitForFunction((n) => new RegExp(`${n} is running|failed`).test(document.querySelector("#deploy-outcome")?.textContent ?? ""), folderName, { timeout: 5 * MINUTE });
  const folderOutcome = await page.textContent("#deploy-outcome");
  if (!folderOutcome.includes(`${folderName} is running`)) throw new Error(`folder deploy: ${folderOutcome}; log: ${await page.textContent("#build-log")}`);
  await snap("deploy-folder");

  step("the agent's page: source, builds, instance");
  await go(`#/agents/${agent.id}`, "#builds table");
  await page.waitForFunction(() => document.querySelector("#builds")?.textContent.includes("ready") && document.querySelector("#instance dl"), null, { timeout: MINUTE });
  await snap("agent");
  step("edit the agent's scaling");
  await page.fill("#scale-max", "2");
  await page.click("text=Save scaling");
  await until("max_instances 2 in the API", async () => (await api("GET", `/v1/agents/${agent.id}`)).scaling.max_instances === 2, MINUTE);

  step("invoke in the playground: sync");
  await go(`#/agents/${agent.id}/invoke`, "#invoke-input");
  await page.fill("#invoke-input", JSON.stringify({ mode: "json", text: "hello from the console" }));
  await page.selectOption("#invoke-mode", "sync");
  await page.click("#invoke-run");
  await page.waitForFunction(() => document.querySelector("#invoke-output")?.textContent.includes("hello from the console"), null, { timeout: MINUTE });
  await snap("invoke-sync");

  step("invoke in the playground: streaming, rendered as it arrives");
  const words = Array.from({ length: 40 }, (_, i) => `word${i}`).join(" ");
  await page.fill("#invoke-input", JSON.stringify({ mode: "sse", text: words }));
  await page.selectOption("#invoke-mode", "stream");
  await page.evaluate(() => {
    window.__chunks = 0;
    new MutationObserver((records) => { window.__chunks += records.length; }).observe(document.querySelector("#invoke-output"), { childList: true });
  });
  await page.click("#invoke-run");
  await page.waitForFunction(() => /^done/.test(document.querySelector("#invoke-meta")?.textContent ?? ""), null, { timeout: MINUTE });
  const streamed = await page.evaluate(() => ({ text: document.querySelector("#invoke-output").textContent, chunks: window.__chunks }));
  if (streamed.text.trim() !== words) throw new Error(`streamed ${JSON.stringify(streamed.text)}`);
  if (streamed.chunks < 2) throw new Error(`the answer was rendered in ${streamed.chunks} piece(s), not as it arrived`);
  console.log(`streaming: ${streamed.chunks} pieces rendered`);
  await snap("invoke-stream");

  step("see the request in the plot");
  await go(`#/agents/${agent.id}/metrics`, "#plot-now dl");
  await page.waitForSelector("#plots figure, #no-history", { timeout: MINUTE });
  await until("the invocations in the requests plot", async () => {
    await page.reload();
    await page.waitForSelector("#plots figure, #no-history", { timeout: MINUTE });
    if (await page.$("#no-history")) throw new Error("the page says the server has no history, but it has");
    return Number(await page.getAttribute("#plots", "data-requests")) > 0 && Number(await page.getAttribute("#plot-requests svg", "data-total")) > 0;
  }, 5 * MINUTE, 3000);
  console.log("plot: the requests appear");
  await snap("plots");

  step("follow logs live and see a new line");
  await go(`#/agents/${agent.id}/logs`, "#log-view");
  await page.waitForFunction(() => document.querySelector("#log-state")?.textContent === "live", null, { timeout: MINUTE });
  const maxSeq = () => page.evaluate(() => Math.max(0, ...[...document.querySelectorAll("#log-view .log-row")].map((r) => Number(r.dataset.seq))));
  const before = await maxSeq();
  const sent = Date.now();
  await api("POST", `/v1/agents/${agent.id}/invoke`, { input: { mode: "json", text: "a new log line" } });
  await until("a new line in the live log", async () => (await maxSeq()) > before, 2 * MINUTE, 50);
  console.log(`figure: a new line showed ${Date.now() - sent} ms after the invoke was sent (informative, not asserted)`);
  await snap("logs");

  step("reconnect: the log resumes after the last line, without duplicates");
  await page.click("#log-reconnect");
  await page.waitForFunction(() => document.querySelector("#log-state")?.textContent === "live", null, { timeout: MINUTE });
  const beforeAgain = await maxSeq();
  await api("POST", `/v1/agents/${agent.id}/invoke`, { input: { mode: "json", text: "another line" } });
  await until("a line after the reconnect", async () => (await maxSeq()) > beforeAgain, 2 * MINUTE, 50);
  // The page holds every stored line exactly once: as many as the store has.
  await until("the page's lines to match the store's", async () => {
    const storedLines = await api("GET", `/v1/agents/${agent.id}/logs?tail=10000`);
    const n = (storedLines.logs ?? storedLines.lines ?? storedLines).length;
    const shown = await page.textContent("#log-count");
    const m = shown.match(/of ([\d,.\s]+) lines/);
    const inPage = m ? Number(m[1].replace(/[^\d]/g, "")) : -1;
    if (inPage > n) throw new Error(`the page has ${inPage} lines, the store ${n}: duplicates`);
    return inPage === n;
  }, MINUTE, 500);

  step("filter the log by level and text");
  await page.uncheck("#log-follow");
  await page.fill("#log-filter", "no line says this");
  await page.waitForFunction(() => document.querySelectorAll("#log-view .log-row").length === 0);
  await page.fill("#log-filter", "");
  await page.selectOption("#log-level", "error");
  await page.selectOption("#log-level", "");
  await page.waitForFunction(() => document.querySelectorAll("#log-view .log-row").length > 0);

  step("10k lines without jank: the page keeps the newest 10,000 and only the rows in view");
  await go(`#/agents/${ECHO}/logs`, "#log-view");
  await page.waitForFunction(() => document.querySelector("#log-state")?.textContent === "live", null, { timeout: MINUTE });
  await page.evaluate(() => {
    window.__longest = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
    }).observe({ type: "longtask", buffered: false });
  });
  const total = 12000;
  const lines = Array.from({ length: total }, (_, i) => `flood ${String(i).padStart(5, "0")}`).join("\n") + "\n";
  await api("POST", `/instances/${ORG}/${ECHO_INSTANCE}/stdin`, { input: lines });
  await until("the flood's last line in the page", () => page.evaluate(() => document.querySelector("#log-view").textContent.includes("flood 11999")), 3 * MINUTE, 200);
  const flood = await page.evaluate(() => ({
    rows: document.querySelectorAll("#log-view .log-row").length,
    count: document.querySelector("#log-count").textContent,
    longest: window.__longest,
  }));
  console.log(`figure: 12,000 lines followed; ${flood.rows} rows in the DOM; ${flood.count}; longest main-thread task ${flood.longest.toFixed(0)} ms (informative)`);
  if (flood.rows > 200) throw new Error(`${flood.rows} log rows in the DOM`);
  if (!/of 10,000 lines/.test(flood.count)) throw new Error(`the page keeps ${flood.count}`);
  await page.uncheck("#log-follow");
  await page.$eval("#log-view", (v) => { v.scrollTop = 0; });
  // At the top: the oldest line kept is the 10,000th from the end.
  await page.waitForFunction(() => document.querySelector("#log-view .log-row")?.textContent.includes("flood 02000"));
  await snap("logs-10k");

  step("cancel a running job");
  await go(`#/agents/${SLOW}/invoke`, "#invoke-input");
  await page.fill("#invoke-input", JSON.stringify({ sleep: 600 }));
  await page.selectOption("#invoke-mode", "async");
  await page.click("#invoke-run");
  await page.waitForSelector("#invoke-job", { timeout: MINUTE });
  await page.click("#invoke-job");
  await page.waitForSelector("#job-cancel:not([hidden])", { timeout: MINUTE });
  const jobId = decodeURIComponent(new URL(page.url()).hash.replace("#/jobs/", ""));
  await page.waitForFunction(() => document.querySelector("#job-detail")?.textContent.includes("running"), null, { timeout: 2 * MINUTE });
  await snap("job-running");
  await page.click("#job-cancel");
  await page.click("#confirm-ok");
  await page.waitForFunction(() => document.querySelector("#job-detail")?.textContent.includes("cancelled"), null, { timeout: MINUTE });
  await snap("job-cancelled");
  await go("#/jobs", "#jobs-table table");
  await page.waitForFunction((id) => document.querySelector("#jobs-table")?.textContent.includes(id), jobId, { timeout: MINUTE });
  await page.selectOption("#job-status", "cancelled");
  await page.waitForFunction(
    (id) => [...document.querySelectorAll("#jobs-table tbody tr")].every((r) => r.textContent.includes("cancelled"))
      && document.querySelector("#jobs-table")?.textContent.includes(id),
    jobId,
    { timeout: MINUTE },
  );
  await snap("jobs");

  step("redeliver a webhook delivery");
  const hooks = await api("GET", "/v1/webhooks");
  const hook = hooks.find((w) => w.url === `${RECEIVER}/hook`);
  await go(`#/webhooks/${hook.id}`, "#deliveries");
  await page.waitForFunction(() => document.querySelector("#deliveries")?.textContent.includes("delivered"), null, { timeout: 3 * MINUTE });
  const deliveryId = await page.evaluate(() => [...document.querySelectorAll("#deliveries tr")].find((r) => r.textContent.includes("delivered"))?.querySelector(".mono")?.textContent);
  const received = async () => (await (await fetch(`${RECEIVER}/received`)).json()).filter((id) => id === deliveryId).length;
  const times = await until(`${deliveryId} at the receiver`, received);
  await page.click(`button[aria-label="Redeliver ${deliveryId}"]`);
  await until(`${deliveryId} delivered again`, async () => (await received()) > times, 3 * MINUTE);
  await snap("webhook-deliveries");

  step("secrets and organizations pages");
  await go("#/secrets", "#secret-name");
  await page.fill("#secret-name", "CONSOLE_TEST");
  await page.fill("#secret-value", "s3cret-value");
  await page.click("form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#secrets-table")?.textContent.includes("CONSOLE_TEST"));
  if ((await page.content()).includes("s3cret-value")) throw new Error("a secret's value is in the page");
  await snap("secrets");
  await page.click('button[aria-label="Delete CONSOLE_TEST"]');
  await page.click("#confirm-ok");
  await page.waitForFunction(() => !document.querySelector("#secrets-table")?.textContent.includes("CONSOLE_TEST"));
  await go("#/orgs", "#orgs-table table");
  const me = await api("GET", "/v1/me");
  const org = await api("GET", `/v1/organizations/${me.organization_id}`);
  const quota = page.getByLabel(`Most instances of ${org.name}`);
  await quota.fill(String(org.quotas.max_instances + 7));
  await quota.press("Enter");
  await until("the new quota in the API", async () => (await api("GET", `/v1/organizations/${org.id}`)).quotas.max_instances === org.quotas.max_instances + 7, MINUTE);
  await snap("orgs");

  step("create a key (shown once), sign in with it, revoke it and be signed out");
  await go("#/keys", "#key-name");
  await page.fill("#key-name", "console-e2e");
  await page.click("form button[type=submit]");
  await page.waitForSelector("#new-key");
  const newKey = (await page.textContent("#new-key")).trim();
  await snap("keys");
  await page.click("#signout");
  await page.waitForSelector("#api-key");
  await page.fill("#api-key", newKey);
  await page.click("button[type=submit]");
  await go("#/keys", 'button[aria-label="Revoke console-e2e"]');
  await page.click('button[aria-label="Revoke console-e2e"]');
  await page.click("#confirm-ok");
  await page.waitForSelector("#api-key", { timeout: MINUTE });
  const after = await page.evaluate(() => sessionStorage.getItem("hangar.apiKey"));
  if (after !== null) throw new Error("still holding a key after revoking it");
  const res = await fetch(`${URL_}/v1/me`, { headers: { Authorization: `Bearer ${newKey}` } });
  if (res.status !== 401) throw new Error(`the revoked key answers ${res.status}`);
  await snap("signed-out");

  if (problems.length) throw new Error(problems.join("\n"));
  console.log("console e2e: every step passed");
} catch (err) {
  console.error(`FAILED: ${err.stack ?? err}`);
  await snap("failure").catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();

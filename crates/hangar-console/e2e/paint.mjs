// The console benchmark's browser side: loads console pages in Debian's
// Chromium through playwright-core and prints what each load cost, one JSON
// line per load. It is run by the `console` benchmark (`bench/src/bin/
// console.rs`), which starts the servers, passes them here and summarises;
// this script only drives the browser and reads the browser's own figures, so
// both servers are measured the same way by the same browser.
//
// Environment:
//   TARGETS    JSON `[{"name": …, "url": …}]`: servers whose `/console/`
//              serves the console (and whose `/v1/` is Hangar's API)
//   HANGAR_KEY an API key, stored for the signed-in page the way the
//              console's sign-in stores it (sessionStorage "hangar.apiKey")
//   RUNS       timed loads per target and page; WARMUP untimed ones first
//   CHROMIUM   the browser (default /usr/bin/chromium)
//
// Each load gets a fresh browser context (no cookies, no storage, no HTTP
// cache) and the cache disabled through CDP. Loads of the targets alternate
// run by run, so a slow moment of the machine falls on both. Per load:
// first paint and first contentful paint (Performance API paint entries),
// DOMContentLoaded, `ready` (the page's own content shown: the sign-in form,
// or the agents list filled from the API), all in ms from navigation start;
// bytes (CDP `encodedDataLength`: every response's headers and body as they
// came over the wire) and requests, counted until nothing is in flight after
// `ready`.

import { chromium } from "playwright-core";

const TARGETS = JSON.parse(process.env.TARGETS ?? "[]");
const KEY = process.env.HANGAR_KEY ?? "";
const RUNS = Number(process.env.RUNS ?? 20);
const WARMUP = Number(process.env.WARMUP ?? 2);
if (!TARGETS.length || !KEY || !(RUNS >= 1)) throw new Error("TARGETS, HANGAR_KEY and RUNS are needed");

// The pages: where to go, whether signed in, and what shows the page is there.
const PAGES = [
  { name: "sign-in", path: "/console/", signedIn: false, ready: "#main form" },
  { name: "agents", path: "/console/#/agents", signedIn: true, ready: "#agents-table > *" },
];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

async function load(target, page) {
  const context = await browser.newContext();
  try {
    if (page.signedIn) {
      await context.addInitScript((key) => sessionStorage.setItem("hangar.apiKey", key), KEY);
    }
    const tab = await context.newPage();
    const cdp = await context.newCDPSession(tab);
    await cdp.send("Network.enable");
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    let bytes = 0;
    let requests = 0;
    const open = new Set();
    cdp.on("Network.requestWillBeSent", (e) => { requests += 1; open.add(e.requestId); });
    cdp.on("Network.loadingFinished", (e) => { bytes += e.encodedDataLength; open.delete(e.requestId); });
    cdp.on("Network.loadingFailed", (e) => { open.delete(e.requestId); });
    await tab.goto(`${target.url}${page.path}`, { waitUntil: "domcontentloaded" });
    // A function, not a string: the console's CSP forbids eval.
    const ready = await (await tab.waitForFunction(
      (selector) => document.querySelector(selector) !== null && performance.now(),
      page.ready, { polling: "raf", timeout: 30_000 },
    )).jsonValue();
    const deadline = Date.now() + 10_000;
    while (open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    if (open.size > 0) throw new Error(`${target.name} ${page.name}: requests still open after 10 s`);
    const timing = await tab.evaluate(() => {
      const paint = Object.fromEntries(performance.getEntriesByType("paint").map((e) => [e.name, e.startTime]));
      const nav = performance.getEntriesByType("navigation")[0];
      return { fp: paint["first-paint"], fcp: paint["first-contentful-paint"], dcl: nav?.domContentLoadedEventEnd };
    });
    if (timing.fp === undefined || timing.fcp === undefined || timing.dcl === undefined) {
      throw new Error(`${target.name} ${page.name}: the browser reported no paint or navigation timing`);
    }
    return { ...timing, ready, bytes, requests };
  } finally {
    await context.close();
  }
}

try {
  for (let run = -WARMUP; run < RUNS; run += 1) {
    for (const target of TARGETS) {
      for (const page of PAGES) {
        const sample = await load(target, page);
        if (run >= 0) console.log(JSON.stringify({ target: target.name, page: page.name, ...sample }));
      }
    }
  }
} finally {
  await browser.close();
}

// The shell: sign-in gate, navigation, and a hash router (`#/agents/…`), so
// the server serves one page and a reload keeps the place. Each page is a
// module loaded when first visited, exporting `render(main, params)` which
// may return a function that stops what the page started (polls, streams).

import { session, signIn, signOut, onSignOut } from "./api.js";
import { h, fill, say } from "./ui.js";

const NAV = [
  ["#/agents", "Agents"],
  ["#/jobs", "Jobs"],
  ["#/webhooks", "Webhooks"],
  ["#/secrets", "Secrets"],
  ["#/keys", "API keys"],
  ["#/orgs", "Organizations"],
];

// Pattern → page module and the names of its parameters.
const ROUTES = [
  [/^\/agents$/, "agents"],
  [/^\/agents\/([^/]+)$/, "agent"],
  [/^\/agents\/([^/]+)\/logs$/, "logs"],
  [/^\/agents\/([^/]+)\/metrics$/, "plots"],
  [/^\/agents\/([^/]+)\/invoke$/, "invoke"],
  [/^\/jobs(?:\/([^/]+))?$/, "jobs"],
  [/^\/webhooks(?:\/([^/]+))?$/, "webhooks"],
  [/^\/secrets$/, "secrets"],
  [/^\/keys$/, "keys"],
  [/^\/orgs$/, "orgs"],
];

const main = document.getElementById("main");
let stop = null;
let generation = 0;

function route() {
  const hash = location.hash.startsWith("#/") ? location.hash.slice(1) : "/agents";
  for (const [re, page] of ROUTES) {
    const m = hash.match(re);
    if (m) return { page, params: m.slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p))) };
  }
  return { page: "agents", params: [] };
}

async function show() {
  if (typeof stop === "function") stop();
  stop = null;
  const mine = ++generation;
  if (!session.key || !session.me) {
    renderNav(null);
    const { render } = await import("./pages/signin.js");
    if (mine === generation) stop = render(main, { onSignedIn: show });
    return;
  }
  const { page, params } = route();
  renderNav(page);
  fill(main, h("p", { class: "muted" }, "Loading…"));
  try {
    const module = await import(`./pages/${page}.js`);
    if (mine !== generation) return;
    fill(main);
    stop = await module.render(main, ...params);
  } catch (err) {
    if (mine !== generation) return;
    fill(main, h("h1", {}, "Something went wrong"), h("p", { role: "alert" }, err.message ?? String(err)));
  }
  if (mine !== generation && typeof stop === "function") stop();
}

function renderNav(page) {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const out = document.getElementById("signout");
  const signedIn = Boolean(session.me);
  nav.hidden = !signedIn;
  out.hidden = !signedIn;
  if (!signedIn) { who.textContent = ""; nav.replaceChildren(); return; }
  const section = { agent: "agents", logs: "agents", plots: "agents", invoke: "agents" }[page] ?? page;
  fill(nav, NAV.map(([href, label]) => h("a", { href, "aria-current": href === `#/${section}` ? "page" : null }, label)));
  who.textContent = `${session.me.email ?? session.me.user_id} · ${session.me.organization_id}${session.me.is_operator ? " · operator" : ""}`;
}

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
onSignOut((reason) => {
  if (reason) say(reason);
  show();
});
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#/")) show();
});

(async () => {
  if (session.key) {
    try { await signIn(session.key); } catch { signOut(); return; }
  }
  show();
})();

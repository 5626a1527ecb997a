// DOM helpers shared by the pages: element building (text is always set as
// text, never parsed as HTML, so nothing an agent logs or a user names can
// run as script), formatting, confirmation and status messages.

/** `h("a", {href: "#/x", class: "b"}, "text", child)`: an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM: the page's CSP allows no inline style attribute.
    else if (k === "style") el.style.cssText = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces `el`'s children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table: `columns` of `{label, value(row), num?}`. */
export function table(columns, rows, { empty = "Nothing yet.", caption } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(r)))))));
}

/** A definition list of `[label, value]`. */
export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

/** Status words as badges, coloured by what they mean. */
export function badge(status) {
  const s = String(status ?? "unknown");
  const l = s.toLowerCase();
  const cls = ["running", "ready", "healthy", "delivered", "completed", "enabled"].includes(l) ? "ok"
    : ["failed", "unhealthy", "error", "cancelled", "revoked"].includes(l) ? "bad"
    : ["stopped", "unknown", "disabled"].includes(l) ? "idle" : "warn";
  return h("span", { class: `badge ${cls}` }, s);
}

export const fmt = {
  num: (n, digits = 0) => (n === null || n === undefined || Number.isNaN(n) ? "—" : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 })),
  ms: (n) => (n === null || n === undefined ? "—" : `${fmt.num(n, n < 10 ? 1 : 0)} ms`),
  pct: (n) => (n === null || n === undefined ? "—" : `${fmt.num(n, 1)} %`),
  time: (t) => (t ? new Date(typeof t === "number" ? t * 1000 : t).toLocaleString() : "—"),
  json: (v) => JSON.stringify(v, null, 2),
};

let statusTimer;
/** A short message in the page's live region (read by screen readers). */
export function say(text, { error = false } = {}) {
  const el = document.getElementById("status");
  el.classList.toggle("error", error);
  el.textContent = text;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { el.textContent = ""; }, error ? 8000 : 4000);
}

/** Runs `fn`, saying its error (if any) instead of throwing. */
export async function attempt(fn, done) {
  try {
    const out = await fn();
    if (done) say(done);
    return out;
  } catch (err) {
    if (err?.name !== "AbortError") say(err.message ?? String(err), { error: true });
    return undefined;
  }
}

/** Asks before something that cannot be undone; resolves to true on confirm. */
export function confirmAction(text, action = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** A labelled form control. */
export function field(label, control) {
  return h("label", {}, label, control);
}

/** Section heading plus content, in a panel. */
export function panel(title, ...children) {
  const id = `h-${Math.random().toString(36).slice(2, 9)}`;
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

/** Calls `fn` now and every `ms` until the page changes; returns a stopper. */
export function every(ms, fn) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (err) { if (err?.status !== 401) console.warn(err); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// Live logs of an agent: the last lines, then new ones as they are written.
// Follow (keep the newest in view), pause (keep receiving, stop redrawing),
// filter by level and text, and resume after a reconnect without showing a
// line twice (stream.js drops events at or before the last id seen).
//
// 10k lines without jank: the page keeps the newest MAX_LINES in an array and
// the DOM holds only the rows in view (fixed-height rows, absolutely placed
// in a spacer as tall as all of them), redrawn at most once per frame.

import { enc } from "../api.js";
import { follow } from "../stream.js";
import { h, fill, field } from "../ui.js";
import { tabs } from "./agent.js";

const MAX_LINES = 10000;
const ROW = 20;
const RANK = { debug: 0, info: 1, warn: 2, error: 3 };

export function render(main, id) {
  const lines = [];
  let shown = [];
  let paused = false;
  let dirty = true;
  let frame = 0;

  const level = h("select", { id: "log-level" },
    h("option", { value: "" }, "all"), ...Object.keys(RANK).map((l) => h("option", { value: l }, `${l} and above`)));
  const text = h("input", { id: "log-filter", type: "search", placeholder: "text in the line" });
  const followBox = h("input", { id: "log-follow", type: "checkbox", checked: true });
  const pause = h("button", { id: "log-pause", type: "button", class: "secondary", "aria-pressed": "false" }, "Pause");
  const reconnect = h("button", { id: "log-reconnect", type: "button", class: "secondary" }, "Reconnect");
  const state = h("span", { id: "log-state", class: "muted", role: "status" }, "connecting");
  const count = h("span", { id: "log-count", class: "muted" }, "0 lines");
  const rows = h("div", { class: "log-rows" });
  const view = h("div", { class: "log-view", id: "log-view", tabindex: "0", role: "log", "aria-label": "Log lines" }, rows);

  const passes = (l) => {
    const min = level.value;
    if (min && (RANK[l.level] ?? 1) < RANK[min]) return false;
    const t = text.value.trim().toLowerCase();
    return !t || l.message.toLowerCase().includes(t);
  };
  const refilter = () => { shown = lines.filter(passes); dirty = true; schedule(); };

  function schedule() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  // Lines beyond the cap go once per frame, not once per line: a burst of
  // thousands costs one splice, not thousands of array shifts.
  function trim() {
    if (lines.length <= MAX_LINES) return;
    lines.splice(0, lines.length - MAX_LINES);
    const oldest = lines[0].seq;
    let gone = 0;
    while (gone < shown.length && shown[gone].seq < oldest) gone++;
    if (gone) shown.splice(0, gone);
  }

  function draw() {
    frame = 0;
    trim();
    if (paused || !dirty) return;
    dirty = false;
    rows.style.height = `${shown.length * ROW}px`;
    if (followBox.checked) view.scrollTop = view.scrollHeight;
    const first = Math.max(0, Math.floor(view.scrollTop / ROW) - 10);
    const last = Math.min(shown.length, Math.ceil((view.scrollTop + view.clientHeight) / ROW) + 10);
    const nodes = [];
    for (let i = first; i < last; i++) {
      const l = shown[i];
      nodes.push(h("div", { class: "log-row", style: `top:${i * ROW}px`, dataset: { seq: l.seq } },
        h("time", {}, l.timestamp?.slice(11, 23) ?? ""), " ",
        h("span", { class: `lvl-${l.level}` }, (l.level ?? "").toUpperCase().padEnd(5)), " ",
        l.message));
    }
    rows.replaceChildren(...nodes);
    count.textContent = `${shown.length.toLocaleString()} of ${lines.length.toLocaleString()} lines`;
  }

  view.addEventListener("scroll", () => {
    // Scrolling up stops following; back at the bottom follows again.
    const atBottom = view.scrollTop + view.clientHeight >= view.scrollHeight - ROW;
    if (followBox.checked !== atBottom) followBox.checked = atBottom;
    dirty = true;
    schedule();
  });
  level.addEventListener("change", refilter);
  text.addEventListener("input", refilter);
  followBox.addEventListener("change", () => { dirty = true; schedule(); });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) { dirty = true; schedule(); }
  });

  const stream = follow(`/v1/agents/${enc(id)}/logs?follow=true&tail=1000`, id, {
    onEvent: (line, seq) => {
      const l = { seq: Number(seq), timestamp: line.timestamp, level: line.level ?? "info", message: String(line.message ?? "") };
      lines.push(l);
      if (passes(l)) shown.push(l);
      dirty = true;
      schedule();
    },
    onState: (s) => { state.textContent = s; },
  });
  reconnect.addEventListener("click", () => stream.reconnect());

  fill(main,
    tabs(id, "logs"),
    h("h1", {}, "Live logs"),
    h("div", { class: "row" },
      field("Level", level), field("Filter", text),
      h("label", { class: "inline", for: "log-follow" }, followBox, "Follow"),
      pause, reconnect, state, count),
    view);
  return () => { stream.close(); cancelAnimationFrame(frame); };
}

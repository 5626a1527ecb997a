// Metric plots of an agent over 1 h, 24 h or 7 d, from the metric history
// (`GET /v1/agents/{id}/metrics?window=…`, its `series`): requests per
// second, p50/p95 latency, error rate, CPU and memory. A server without
// metric history answers the current figures only: the page says so.

import { get, enc } from "../api.js";
import { h, fill, kv, fmt, every } from "../ui.js";
import { linePlot } from "../plot.js";
import { tabs } from "./agent.js";

const WINDOWS = [["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]];

export function render(main, id) {
  let span = sessionStorage.getItem("hangar.window") ?? "1h";
  const choose = h("fieldset", { class: "row", id: "plot-window" }, h("legend", {}, "Window"),
    WINDOWS.map(([w, label]) => h("label", { class: "inline" },
      h("input", { type: "radio", name: "window", value: w, checked: w === span, onchange: () => { span = w; sessionStorage.setItem("hangar.window", w); load(); } }),
      label)));
  const now = h("div", { id: "plot-now" });
  const plots = h("div", { class: "plots", id: "plots", "aria-live": "off" });
  fill(main, tabs(id, "metrics"), h("h1", {}, "Metrics"), choose, now, plots);

  async function load() {
    const m = await get(`/v1/agents/${enc(id)}/metrics?window=${span}`);
    fill(now, h("section", { class: "panel" }, kv([
      [`Requests (${m.window})`, fmt.num(m.requests)],
      ["Mean latency", fmt.ms(m.avg_latency_ms)],
      ["Error rate", fmt.pct(m.error_rate_percent)],
      ["CPU now", fmt.pct(m.cpu_percent)],
      ["Memory now", `${fmt.num(m.memory_mb)} MB`],
      ["Replicas", fmt.num(m.replicas)],
    ])));
    if (!Array.isArray(m.series)) {
      fill(plots, h("p", { class: "empty", id: "no-history" },
        "No history on this server: it answers current figures only, so there is nothing to plot yet."));
      return;
    }
    const times = m.series.map((p) => new Date(p.at));
    const step = m.step_seconds || 60;
    const col = (k, f = (v) => v) => m.series.map((p) => (p[k] === null || p[k] === undefined ? null : f(p[k])));
    const figure = (key, title, series, unit) => h("figure", { class: "plot", id: `plot-${key}` },
      h("figcaption", {}, title),
      linePlot({ title, times, series, unit }),
      series.length > 1 ? h("div", { class: "legend" }, series.map((s, k) => h("span", { class: `k${k}` }, `■ ${s.name} `))) : null);
    fill(plots,
      figure("requests", "Requests per second", [{ name: "requests/s", values: col("requests", (v) => v / step) }], ""),
      figure("latency", "Latency (ms)", [{ name: "p50", values: col("p50_latency_ms") }, { name: "p95", values: col("p95_latency_ms") }], ""),
      figure("errors", "Error rate (%)", [{ name: "errors", values: col("error_rate_percent") }], "%"),
      figure("cpu", "CPU (%)", [{ name: "cpu", values: col("cpu_percent") }], "%"),
      figure("memory", "Memory (MB)", [{ name: "memory", values: col("memory_mb") }], ""));
    plots.dataset.requests = String(m.series.reduce((a, p) => a + (p.requests ?? 0), 0));
  }
  return every(15000, load);
}

// Line plots as plain SVG: a time axis, a value axis from zero, one path per
// series with gaps where a value is missing (null). No chart library: the
// console needs lines over time, and this is all of it.

const NS = "http://www.w3.org/2000/svg";
const W = 360;
const H = 160;
const PAD = { left: 44, right: 8, top: 8, bottom: 22 };

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function label(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
  return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(v < 1 ? 2 : 1)));
}

/**
 * An SVG of `series` (`[{name, values: [number|null]}]`) over `times`
 * (Date per point, oldest first). `title` names it for screen readers.
 */
export function linePlot({ title, times, series, unit = "" }) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(0, ...all));
  const total = all.reduce((a, b) => a + b, 0);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-total": total, "data-points": all.length });
  const latest = series.map((s) => `${s.name} ${label([...s.values].reverse().find((v) => v !== null && v !== undefined) ?? 0)}${unit}`).join(", ");
  svg.append(el("title", {}, `${title}: latest ${latest}; highest ${label(max)}${unit}`));
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  const n = times.length;
  const x = (i) => (n <= 1 ? x1 : x0 + ((x1 - x0) * i) / (n - 1));
  const y = (v) => y0 - ((y0 - y1) * v) / max;
  for (const f of [0, 0.5, 1]) {
    const yy = y(max * f);
    svg.append(el("line", { x1: x0, x2: x1, y1: yy, y2: yy, class: f === 0 ? "axis" : "grid" }));
    svg.append(el("text", { x: x0 - 4, y: yy + 3, "text-anchor": "end" }, `${label(max * f)}${unit}`));
  }
  if (n) {
    const fmtTime = (d) => d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    svg.append(el("text", { x: x0, y: H - 6 }, fmtTime(times[0])));
    svg.append(el("text", { x: x1, y: H - 6, "text-anchor": "end" }, fmtTime(times[n - 1])));
  }
  series.forEach((s, k) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    // A lone point between gaps would draw nothing: a dot shows it.
    if (d) svg.append(el("path", { d, class: `s${k}` }));
    s.values.forEach((v, i) => {
      const alone = v !== null && v !== undefined && (s.values[i - 1] ?? null) === null && (s.values[i + 1] ?? null) === null;
      if (alone) svg.append(el("circle", { cx: x(i), cy: y(v), r: 2.5, class: `s${k}` }));
    });
  });
  if (!all.length) {
    svg.append(el("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle", class: "none" }, "no data in this window yet"));
  }
  return svg;
}

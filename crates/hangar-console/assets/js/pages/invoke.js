// The invoke playground: JSON input, and the three ways to invoke —
// sync (the answer), streaming (SSE events rendered as they arrive, read
// from a fetch body so the request carries the key), async (a job, polled
// until it ends).

import { api, get, enc } from "../api.js";
import { h, fill, fmt, field, badge, say } from "../ui.js";
import { tabs } from "./agent.js";

export function render(main, id) {
  const saved = sessionStorage.getItem(`hangar.input.${id}`) ?? "{\n  \n}";
  const input = h("textarea", { id: "invoke-input", rows: 8, spellcheck: "false" }, saved);
  const mode = h("select", { id: "invoke-mode" },
    h("option", { value: "sync" }, "sync"), h("option", { value: "stream" }, "streaming"), h("option", { value: "async" }, "async (job)"));
  const run = h("button", { type: "submit", id: "invoke-run" }, "Invoke");
  const stop = h("button", { type: "button", class: "secondary", id: "invoke-stop", disabled: true }, "Stop");
  const meta = h("p", { id: "invoke-meta", class: "muted", role: "status" });
  const output = h("pre", { id: "invoke-output", tabindex: "0", "aria-label": "Output" });
  let controller = null;
  let alive = true;

  const form = h("form", {},
    field("Input (JSON)", input),
    h("div", { class: "row" }, field("Mode", mode), run, stop));
  stop.addEventListener("click", () => controller?.abort());
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let body;
    try { body = JSON.parse(input.value || "{}"); } catch (err) { say(`The input is not JSON: ${err.message}`, { error: true }); input.focus(); return; }
    sessionStorage.setItem(`hangar.input.${id}`, input.value);
    output.textContent = "";
    meta.textContent = "";
    controller = new AbortController();
    run.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    try {
      if (mode.value === "sync") {
        const res = await api("POST", `/v1/agents/${enc(id)}/invoke`, { input: body }, { signal: controller.signal });
        output.textContent = fmt.json(res.data);
        meta.textContent = `done in ${fmt.ms(res.meta?.latency_ms ?? performance.now() - started)} · ${res.meta?.request_id ?? ""}`;
      } else if (mode.value === "stream") {
        await stream(id, body, controller.signal, output, meta);
      } else {
        const res = await api("POST", `/v1/agents/${enc(id)}/invoke`, { input: body, async: true }, { signal: controller.signal });
        const job = res.data;
        pollJob(job.job_id ?? job.id, output, meta, () => alive);
      }
    } catch (err) {
      meta.replaceChildren(badge("error"), ` ${err.code ? `${err.code}: ` : ""}${err.name === "AbortError" ? "stopped" : err.message}`);
    } finally {
      run.disabled = false;
      stop.disabled = true;
    }
  });

  fill(main, tabs(id, "invoke"), h("h1", {}, "Invoke"), h("section", { class: "panel" }, form), meta, output);
  return () => { alive = false; controller?.abort(); };
}

/** A streaming invoke: `Accept: text/event-stream`, each event as it comes. */
async function stream(id, input, signal, output, meta) {
  const res = await api("POST", `/v1/agents/${enc(id)}/invoke`, { input }, { signal, raw: true, headers: { Accept: "text/event-stream" } });
  meta.textContent = "streaming…";
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let events = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const raw = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = raw.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      let event;
      try { event = JSON.parse(data); } catch { event = { type: "chunk", content: data }; }
      events++;
      if (event.type === "chunk") output.append(typeof event.content === "string" ? event.content : JSON.stringify(event.content));
      else if (event.type === "start") meta.textContent = `streaming… ${event.request_id ?? ""}`;
      else if (event.type === "done") meta.textContent = `done · ${events} events${event.usage ? ` · usage ${JSON.stringify(event.usage)}` : ""}`;
      else if (event.type === "error") meta.replaceChildren(badge("error"), ` ${event.error?.code}: ${event.error?.message}`);
    }
  }
}

/** Polls a job every second until it ends (or the page is left). */
function pollJob(jobId, output, meta, alive) {
  const tick = async () => {
    if (!alive()) return;
    let job;
    try { job = await get(`/v1/jobs/${enc(jobId)}`); } catch (err) { meta.textContent = err.message; return; }
    meta.replaceChildren("Job ", h("a", { href: `#/jobs/${enc(jobId)}`, id: "invoke-job" }, jobId), " ", badge(job.status));
    if (["completed", "failed", "cancelled"].includes(job.status)) {
      output.textContent = fmt.json(job.output ?? job.error);
      return;
    }
    setTimeout(tick, 1000);
  };
  tick();
}

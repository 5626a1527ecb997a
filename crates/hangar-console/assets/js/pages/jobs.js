// Jobs: the organization's async invocations, newest first (`GET /v1/jobs`,
// optionally in one status); any job also opens by its ID. A job's page
// shows its status, attempts, output or error, and cancels it while it may
// still run.

import { get, post, list, enc } from "../api.js";
import { h, fill, table, kv, badge, fmt, panel, every, attempt, confirmAction, field } from "../ui.js";

const STATUSES = ["", "pending", "running", "completed", "failed", "cancelled"];

export function render(main, id) {
  return id ? detail(main, id) : index(main);
}

function index(main) {
  const body = h("div", { id: "jobs-table" });
  const open = h("input", { id: "job-id", placeholder: "job_…", pattern: "job_.+", required: true });
  const form = h("form", { class: "row" }, field("Job ID", open), h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = `#/jobs/${enc(open.value.trim())}`; });
  const status = h("select", { id: "job-status" }, ...STATUSES.map((s) => h("option", { value: s }, s || "any")));
  const filter = h("div", { class: "row" }, field("Status", status));
  fill(main, h("h1", {}, "Jobs"), panel("Open a job", form), panel("Recent jobs", filter, body));
  return every(3000, async () => {
    const only = status.value ? `&status=${enc(status.value)}` : "";
    const jobs = await list(`/v1/jobs?limit=50${only}`, 50);
    fill(body, table([
      { label: "Job", value: (j) => h("a", { href: `#/jobs/${enc(j.id)}` }, j.id) },
      { label: "Agent", value: (j) => h("a", { href: `#/agents/${enc(j.agent_id)}` }, j.agent_id) },
      { label: "Status", value: (j) => badge(j.status) },
      { label: "Attempts", num: true, value: (j) => j.attempts },
      { label: "Accepted", value: (j) => fmt.time(j.created_at) },
      { label: "Duration", num: true, value: (j) => fmt.ms(j.duration_ms) },
    ], jobs, { empty: "No jobs yet: start one from an agent's Invoke page (async)." }));
  });
}

function detail(main, id) {
  const info = h("div", { id: "job-detail" });
  const cancel = h("button", { type: "button", class: "danger", id: "job-cancel", hidden: true }, "Cancel job");
  cancel.addEventListener("click", async () => {
    if (!(await confirmAction(`Cancel ${id}? A running request is aborted.`, "Cancel job"))) return;
    await attempt(() => post(`/v1/jobs/${enc(id)}/cancel`), "Cancelled");
    refresh();
  });
  fill(main, h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), h("h1", {}, "Job ", h("span", { class: "mono" }, id)), h("div", { class: "row" }, cancel), panel("Details", info));
  async function refresh() {
    const job = await get(`/v1/jobs/${enc(id)}`);
    cancel.hidden = !["pending", "running"].includes(job.status);
    fill(info, kv([
      ["Status", badge(job.status)],
      ["Agent", h("a", { href: `#/agents/${enc(job.agent_id)}` }, job.agent_id)],
      ["Mode", job.mode],
      ["Attempts", String(job.attempts)],
      ["Accepted", fmt.time(job.created_at)],
      ["Started", fmt.time(job.started_at)],
      ["Finished", fmt.time(job.finished_at)],
      ["Latency", fmt.ms(job.latency_ms)],
      ["Output", job.output ? h("pre", {}, fmt.json(job.output)) : null],
      ["Error", job.error ? h("pre", {}, fmt.json(job.error)) : null],
      ["Usage", job.usage ? JSON.stringify(job.usage) : null],
    ]));
  }
  return every(2000, refresh);
}

// Jobs: async invocations. The API has no list of an organization's jobs,
// so the list is what this console knows of: jobs started from this tab's
// playground, and those the organization's events name (`job.completed`,
// `job.failed`); any other job opens by its ID. A job's page shows its
// status, attempts, output or error, and cancels it while it may still run.

import { get, post, list, enc } from "../api.js";
import { h, fill, table, kv, badge, fmt, panel, every, attempt, confirmAction, field } from "../ui.js";

const KNOWN = "hangar.jobs";

/** Adds a job to this tab's list. */
export function remember(id) {
  const ids = JSON.parse(sessionStorage.getItem(KNOWN) ?? "[]").filter((j) => j !== id);
  ids.unshift(id);
  sessionStorage.setItem(KNOWN, JSON.stringify(ids.slice(0, 100)));
}

export function render(main, id) {
  return id ? detail(main, id) : index(main);
}

function index(main) {
  const body = h("div", { id: "jobs-table" });
  const open = h("input", { id: "job-id", placeholder: "job_…", pattern: "job_.+", required: true });
  const form = h("form", { class: "row" }, field("Job ID", open), h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = `#/jobs/${enc(open.value.trim())}`; });
  fill(main, h("h1", {}, "Jobs"), panel("Open a job", form), panel("Recent jobs", body));
  return every(3000, async () => {
    const ids = new Set(JSON.parse(sessionStorage.getItem(KNOWN) ?? "[]"));
    const events = await list("/v1/events?limit=100", 100).catch(() => []);
    for (const e of events) if (String(e.subject).startsWith("job_")) ids.add(e.subject);
    const jobs = (await Promise.all([...ids].slice(0, 50).map((j) => get(`/v1/jobs/${enc(j)}`).catch(() => null)))).filter(Boolean);
    jobs.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    fill(body, table([
      { label: "Job", value: (j) => h("a", { href: `#/jobs/${enc(j.id)}` }, j.id) },
      { label: "Agent", value: (j) => h("a", { href: `#/agents/${enc(j.agent_id)}` }, j.agent_id) },
      { label: "Status", value: (j) => badge(j.status) },
      { label: "Attempts", num: true, value: (j) => j.attempts },
      { label: "Accepted", value: (j) => fmt.time(j.created_at) },
      { label: "Duration", num: true, value: (j) => fmt.ms(j.duration_ms) },
    ], jobs, { empty: "No jobs seen yet: start one from an agent's Invoke page (async)." }));
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
    remember(id);
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

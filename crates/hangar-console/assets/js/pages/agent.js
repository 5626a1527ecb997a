// One agent: its source, builds (with a build's log, live while it builds),
// its instance and replicas (health, restarts, resource use), environment
// (the API redacts sensitive values before they reach the page), scaling
// settings to edit, and start / stop / redeploy / delete behind a
// confirmation.

import { api, get, post, del, list, enc, session } from "../api.js";
import { follow } from "../stream.js";
import { h, fill, table, kv, badge, fmt, panel, every, attempt, confirmAction, field } from "../ui.js";

export function tabs(id, current) {
  const t = (href, label, key) => h("a", { href, "aria-current": key === current ? "page" : null }, label);
  return h("nav", { class: "tabs", "aria-label": "Agent" },
    t(`#/agents/${enc(id)}`, "Overview", "overview"),
    t(`#/agents/${enc(id)}/logs`, "Logs", "logs"),
    t(`#/agents/${enc(id)}/metrics`, "Metrics", "metrics"),
    t(`#/agents/${enc(id)}/invoke`, "Invoke", "invoke"));
}

export async function render(main, id) {
  let agent = await get(`/v1/agents/${enc(id)}`);
  const title = h("h1", {}, agent.display_name || agent.name, " ", h("span", { id: "agent-status" }, badge(agent.status)));
  const actions = h("div", { class: "row" });
  const summary = h("div");
  const instance = h("div", { id: "instance" });
  const builds = h("div", { id: "builds" });
  const buildLog = h("div", { id: "build-log-panel" });
  let buildStream = null;

  const act = (label, verb, danger, run) => h("button", {
    type: "button", class: danger ? "danger" : "secondary",
    onclick: async () => {
      if (!(await confirmAction(`${verb} ${agent.name}?`, label))) return;
      await attempt(run, `${label}: done`);
      refresh();
    },
  }, label);
  fill(actions,
    act("Start", "Start", false, () => post(`/v1/agents/${enc(id)}/start`)),
    act("Stop", "Stop", false, () => post(`/v1/agents/${enc(id)}/stop`)),
    act("Redeploy", "Build and deploy again from the same source:", false, () => post(`/v1/agents/${enc(id)}/redeploy`, {})),
    act("Delete", "Delete, with its instance and builds,", true, async () => {
      await del(`/v1/agents/${enc(id)}`);
      location.hash = "#/agents";
    }));

  const scaling = scalingForm(id, agent, (a) => { agent = a; });

  function showBuildLog(build) {
    if (buildStream) buildStream.close();
    const pre = h("pre", { id: "build-log", tabindex: "0", "aria-label": `Log of ${build.id}` });
    const state = h("span", { class: "muted" });
    fill(buildLog, h("h3", {}, `Log of ${build.id} `, state), pre);
    buildStream = follow(`/v1/builds/${enc(build.id)}/logs?follow=true`, build.id, {
      onEvent: (line) => { pre.append(`${line.message ?? line}\n`); pre.scrollTop = pre.scrollHeight; },
      onNamed: { done: (d) => { buildStream.close(); state.textContent = `(${d.status}${d.reason ? `: ${d.reason}` : ""})`; } },
      onState: (s) => { if (s !== "closed") state.textContent = `(${s})`; },
    });
  }

  async function refresh() {
    agent = await get(`/v1/agents/${enc(id)}`);
    fill(document.getElementById("agent-status") ?? h("span"), badge(agent.status));
    fill(summary, kv([
      ["ID", agent.id],
      ["Cloud", agent.cloud_id],
      ["Source", JSON.stringify(agent.source)],
      ["Runtime", agent.runtime ? JSON.stringify(agent.runtime) : null],
      ["Endpoint", agent.endpoints?.base_url],
      ["Deployed", fmt.time(agent.deployed_at)],
      ["Health", agent.health?.status],
      ["Uptime", fmt.pct(agent.health?.uptime_percent)],
    ]));
    const rows = await list(`/v1/agents/${enc(id)}/builds?limit=20`, 20);
    fill(builds, table([
      { label: "Build", value: (b) => h("span", { class: "mono" }, b.id) },
      { label: "Status", value: (b) => badge(b.status) },
      { label: "Queued", value: (b) => fmt.time(b.created_at) },
      { label: "Finished", value: (b) => fmt.time(b.finished_at) },
      { label: "Reason", value: (b) => b.reason ?? "" },
      { label: "", value: (b) => h("button", { type: "button", class: "secondary", onclick: () => showBuildLog(b) }, "Show log") },
    ], rows, { empty: "No builds." }));
    if (agent.instance_id) {
      const org = session.me.organization_id;
      const [inst, status] = await Promise.all([
        get(`/instances/${enc(agent.instance_id)}`).catch(() => null),
        get(`/instances/status/${enc(org)}/${enc(agent.instance_id)}`).catch(() => null),
      ]);
      fill(instance, kv([
        ["Instance", agent.instance_id],
        ["Status", status?.status ?? inst?.status],
        ["Replicas ready", status?.replicas],
        ["Restarts", status?.restart_count],
        ["Health checks", status?.health_checks ? JSON.stringify(status.health_checks) : null],
        ["Resource use", status?.resource_usage ? JSON.stringify(status.resource_usage) : null],
      ]));
    } else {
      fill(instance, h("p", { class: "muted" }, "No instance yet."));
    }
  }

  const env = Object.entries(agent.environment ?? {});
  fill(main,
    tabs(id, "overview"),
    title,
    actions,
    panel("Summary", summary),
    panel("Instance and replicas", instance),
    panel("Scaling", scaling),
    panel("Environment", h("p", { class: "muted" }, "Sensitive values are redacted by the server (****)."),
      table([{ label: "Name", value: ([k]) => h("code", {}, k) }, { label: "Value", value: ([, v]) => h("code", {}, String(v)) }], env, { empty: "No variables." })),
    panel("Builds", builds, buildLog));
  const stop = every(3000, refresh);
  return () => { stop(); buildStream?.close(); };
}

function scalingForm(id, agent, update) {
  const s = agent.scaling ?? {};
  const min = h("input", { type: "number", id: "scale-min", min: 0, max: 100, value: s.min_instances ?? 0 });
  const max = h("input", { type: "number", id: "scale-max", min: 1, max: 100, value: s.max_instances ?? 1 });
  const cpu = h("input", { type: "number", id: "scale-cpu", min: 1, max: 100, value: s.target_cpu_percent ?? 70 });
  const form = h("form", { class: "row" },
    field("Fewest replicas", min), field("Most replicas", max), field("Target CPU %", cpu),
    h("button", { type: "submit" }, "Save scaling"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const saved = await attempt(() => api("PATCH", `/v1/agents/${enc(id)}`, {
      scaling: { min_instances: Number(min.value), max_instances: Number(max.value), target_cpu_percent: Number(cpu.value) },
    }), "Scaling saved");
    if (saved) update(saved.data);
  });
  return form;
}



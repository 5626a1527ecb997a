// Agents: every agent of the organization with its figures, refreshed every
// few seconds; and deploying from the browser — drop a .tar.gz or .zip (or
// choose one) and it is uploaded, built and started with the same requests
// as `hangar deploy`: POST /v1/uploads, PUT the archive to the signed URL,
// then POST /v1/agents (or, when the cloud already has an agent of that
// name, POST /v1/agents/{id}/redeploy), then follow the build's log. A
// folder (dropped or chosen) is packed as a .tar.gz in the page first.

import { api, get, post, list, enc } from "../api.js";
import { follow } from "../stream.js";
import { filesOf, tarGz } from "../pack.js";
import { h, fill, table, badge, fmt, panel, every, say } from "../ui.js";

export function render(main) {
  const body = h("div", { id: "agents-table", "aria-live": "off" });
  const deploy = deployPanel();
  fill(main,
    h("h1", {}, "Agents"),
    deploy.el,
    panel("All agents", body));
  const stopPoll = every(3000, async () => {
    const agents = await list("/v1/agents?limit=100");
    fill(body, table([
      { label: "Name", value: (a) => h("a", { href: `#/agents/${enc(a.id)}` }, a.display_name || a.name) },
      { label: "Status", value: (a) => badge(a.status) },
      { label: "Replicas", num: true, value: (a) => `${a.scaling?.current_instances ?? 0} / ${a.scaling?.max_instances ?? "—"}` },
      { label: "Requests (24 h)", num: true, value: (a) => fmt.num(a.metrics?.requests_24h) },
      { label: "Latency", num: true, value: (a) => fmt.ms(a.metrics?.avg_latency_ms) },
      { label: "Errors", num: true, value: (a) => fmt.pct(a.metrics?.error_rate_percent) },
      { label: "Health", value: (a) => badge(a.health?.status ?? "unknown") },
      { label: "", value: (a) => h("span", { class: "row" },
          h("a", { href: `#/agents/${enc(a.id)}/logs` }, "Logs"), " ",
          h("a", { href: `#/agents/${enc(a.id)}/metrics` }, "Metrics"), " ",
          h("a", { href: `#/agents/${enc(a.id)}/invoke` }, "Invoke")) },
    ], agents, { empty: "No agents yet: drop an archive above to deploy one." }));
  });
  return () => { stopPoll(); deploy.stop(); };
}

const ARCHIVE = /\.(tar\.gz|tgz|zip)$/i;

/** The name an agent gets from its archive's file name. */
function nameOf(file) {
  return file.name.replace(ARCHIVE, "").toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63) || "agent";
}

function deployPanel() {
  const fileInput = h("input", { type: "file", id: "archive", accept: ".tar.gz,.tgz,.zip,application/gzip,application/zip" });
  const folderInput = h("input", { type: "file", id: "folder", webkitdirectory: true });
  const nameInput = h("input", { id: "deploy-name", name: "name", placeholder: "from the file name", pattern: "[a-z0-9][a-z0-9-]*" });
  const cloudInput = h("input", { id: "deploy-cloud", name: "cloud", value: "local" });
  const progress = h("div", { id: "deploy-progress", "aria-live": "polite" });
  let stream = null;
  const zone = h("div", { class: "drop", id: "drop-zone" },
    h("p", {}, h("strong", {}, "Drop a .tar.gz, a .zip or a folder of an agent here"), " — or choose one:"),
    h("div", { class: "row", style: "justify-content:center" },
      h("label", { for: "archive" }, "Archive", fileInput),
      h("label", { for: "folder" }, "Folder", folderInput),
      h("label", { for: "deploy-name" }, "Agent name", nameInput),
      h("label", { for: "deploy-cloud" }, "Cloud", cloudInput)));
  const start = (file) => {
    if (!ARCHIVE.test(file.name)) { say(`${file.name} is not a .tar.gz or .zip`, { error: true }); return; }
    if (stream) stream.close();
    deployArchive(file, nameInput.value.trim() || nameOf(file), cloudInput.value.trim() || "local", progress, (s) => { stream = s; });
  };
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  const startFolder = async (folder, files) => {
    if (!files.length) { say(`${folder} has no files`, { error: true }); return; }
    try {
      start(await tarGz(folder, files));
    } catch (err) {
      say(`Cannot pack ${folder}: ${err.message}`, { error: true });
    }
  };
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    // The entry must be taken while the event is being dispatched.
    const entry = ev.dataTransfer?.items?.[0]?.webkitGetAsEntry?.();
    if (entry?.isDirectory) {
      filesOf(entry).then((files) => startFolder(entry.name, files), (err) => say(err.message, { error: true }));
      return;
    }
    const file = ev.dataTransfer?.files?.[0];
    if (file) start(file);
  });
  fileInput.addEventListener("change", () => { if (fileInput.files[0]) start(fileInput.files[0]); });
  folderInput.addEventListener("change", () => {
    const chosen = [...folderInput.files];
    if (!chosen.length) return;
    // webkitRelativePath is `<folder>/<path in it>`.
    const folder = chosen[0].webkitRelativePath.split("/")[0];
    startFolder(folder, chosen.map((file) => ({ path: file.webkitRelativePath.split("/").slice(1).join("/"), file })));
  });
  return { el: panel("Deploy", zone, progress), stop: () => stream?.close() };
}

async function deployArchive(file, name, cloud, progress, setStream) {
  const steps = h("ol", { id: "deploy-steps" });
  const log = h("pre", { id: "build-log", "aria-label": "Build log", tabindex: "0" });
  const outcome = h("p", { id: "deploy-outcome", role: "status" });
  fill(progress, h("h3", {}, `Deploying ${name}`), steps, log, outcome);
  const step = (text) => steps.append(h("li", {}, text));
  try {
    step(`Uploading ${file.name} (${fmt.num(file.size / 1024, 1)} KiB)…`);
    const upload = await post("/v1/uploads", { filename: file.name });
    // The signed URL names this server; PUT it on the page's own origin so
    // the browser does not treat another spelling of the host as cross-origin.
    const signed = new URL(upload.upload_url, location.href);
    const put = await fetch(signed.pathname + signed.search, { method: "PUT", body: file, headers: { "Content-Type": "application/octet-stream" } });
    if (!put.ok) {
      const err = await put.json().catch(() => null);
      throw new Error(err?.error?.message ?? `upload failed (${put.status})`);
    }
    const source = { type: "upload", archive_url: upload.upload_url };
    const existing = (await list("/v1/agents?limit=100")).find((a) => a.name === name && (a.cloud_id === cloud || cloud === "local"));
    let agent;
    if (existing) {
      step(`Redeploying ${name}…`);
      agent = await post(`/v1/agents/${enc(existing.id)}/redeploy`, { source });
    } else {
      step(`Creating ${name}…`);
      agent = (await api("POST", "/v1/agents", { name, cloud_id: cloud, source })).data;
    }
    const link = h("a", { href: `#/agents/${enc(agent.id)}` }, agent.id);
    steps.lastChild.append(" ", link);
    let buildId = agent.latest_build_id;
    if (!buildId || existing) {
      const builds = await list(`/v1/agents/${enc(agent.id)}/builds?limit=1`, 1);
      buildId = builds[0]?.id ?? buildId;
    }
    step(`Building ${buildId}…`);
    const done = await new Promise((resolve) => {
      const stream = follow(`/v1/builds/${enc(buildId)}/logs?follow=true`, buildId, {
        onEvent: (line) => {
          log.append(`${line.message ?? line}\n`);
          log.scrollTop = log.scrollHeight;
        },
        // The build ended: stop here, or the browser would reconnect.
        onNamed: { done: (d) => { stream.close(); resolve(d); } },
      });
      setStream(stream);
    });
    if (done.status !== "ready") throw new Error(`build ${done.status}${done.reason ? `: ${done.reason}` : ""}`);
    step("Built. Starting…");
    for (;;) {
      const now = await get(`/v1/agents/${enc(agent.id)}`);
      const status = String(now.status).toLowerCase();
      if (status === "running") break;
      if (status === "failed" || status === "stopped") throw new Error(`the agent is ${now.status}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    outcome.replaceChildren(badge("running"), " ", h("a", { href: `#/agents/${enc(agent.id)}` }, `${name} is running`));
    say(`${name} is running`);
  } catch (err) {
    outcome.replaceChildren(badge("failed"), ` ${err.message}`);
    say(err.message, { error: true });
  }
}

// Webhooks: endpoints (create — the signing secret shown once —, enable,
// disable, delete) and each endpoint's deliveries with their status, with
// redelivery of any of them.

import { api, get, post, patch, del, list, enc } from "../api.js";
import { h, fill, table, kv, badge, fmt, panel, every, attempt, confirmAction, field } from "../ui.js";

export function render(main, id) {
  return id ? detail(main, id) : index(main);
}

function index(main) {
  const body = h("div", { id: "webhooks-table" });
  const created = h("div", { "aria-live": "polite" });
  const url = h("input", { id: "webhook-url", type: "url", required: true, size: 40, placeholder: "https://example.com/hooks" });
  const events = h("input", { id: "webhook-events", placeholder: "all (or agent.deployed, job.failed, …)", size: 32 });
  const description = h("input", { id: "webhook-description" });
  const form = h("form", { class: "row" }, field("Receiver URL", url), field("Events (comma-separated)", events), field("Description", description), h("button", { type: "submit" }, "Add endpoint"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const list = events.value.split(",").map((e) => e.trim()).filter(Boolean);
    const hook = await attempt(() => api("POST", "/v1/webhooks", { url: url.value.trim(), events: list, description: description.value.trim() || null }).then((j) => j.data), "Endpoint added");
    if (!hook) return;
    form.reset();
    fill(created, h("div", { class: "secret-once", id: "webhook-secret" },
      h("p", {}, "Signing secret of ", h("a", { href: `#/webhooks/${enc(hook.id)}` }, hook.url), " — shown this once; receivers verify deliveries with it:"),
      h("code", {}, hook.secret)));
    refresh();
  });
  async function refresh() {
    const hooks = await get("/v1/webhooks");
    fill(body, table([
      { label: "URL", value: (w) => h("a", { href: `#/webhooks/${enc(w.id)}` }, w.url) },
      { label: "Events", value: (w) => (w.events.length ? w.events.join(", ") : "all") },
      { label: "State", value: (w) => badge(w.enabled ? "enabled" : "disabled") },
      { label: "Created", value: (w) => fmt.time(w.created_at) },
    ], hooks, { empty: "No endpoints." }));
  }
  fill(main, h("h1", {}, "Webhooks"), panel("Add an endpoint", form, created), panel("Endpoints", body));
  return every(5000, refresh);
}

function detail(main, id) {
  const info = h("div");
  const deliveries = h("div", { id: "deliveries" });
  const toggle = h("button", { type: "button", class: "secondary", id: "webhook-toggle" });
  const remove = h("button", { type: "button", class: "danger" }, "Delete endpoint");
  let hook;
  toggle.addEventListener("click", async () => {
    await attempt(() => patch(`/v1/webhooks/${enc(id)}`, { enabled: !hook.enabled }), hook.enabled ? "Disabled" : "Enabled");
    refresh();
  });
  remove.addEventListener("click", async () => {
    if (!(await confirmAction(`Delete the endpoint ${hook?.url}? Its deliveries stop.`, "Delete"))) return;
    if (await attempt(() => del(`/v1/webhooks/${enc(id)}`), "Deleted")) location.hash = "#/webhooks";
  });
  async function refresh() {
    hook = await get(`/v1/webhooks/${enc(id)}`);
    toggle.textContent = hook.enabled ? "Disable" : "Enable";
    fill(info, kv([["ID", hook.id], ["URL", hook.url], ["Events", hook.events.length ? hook.events.join(", ") : "all"], ["State", badge(hook.enabled ? "enabled" : "disabled")], ["Description", hook.description]]));
    const rows = await list(`/v1/webhooks/${enc(id)}/deliveries?limit=50`, 50);
    fill(deliveries, table([
      { label: "Delivery", value: (d) => h("span", { class: "mono" }, d.id) },
      { label: "Event", value: (d) => d.event_type },
      { label: "Status", value: (d) => badge(d.status) },
      { label: "Attempts", num: true, value: (d) => d.attempts },
      { label: "Last answer", value: (d) => d.last_status_code ?? d.last_error ?? "—" },
      { label: "Delivered", value: (d) => fmt.time(d.delivered_at) },
      { label: "", value: (d) => h("button", {
          type: "button", class: "secondary", "aria-label": `Redeliver ${d.id}`,
          onclick: async () => { await attempt(() => post(`/v1/webhooks/${enc(id)}/deliveries/${enc(d.id)}/redeliver`), `Redelivery of ${d.id} queued`); refresh(); },
        }, "Redeliver") },
    ], rows, { empty: "No deliveries yet." }));
  }
  fill(main, h("p", {}, h("a", { href: "#/webhooks" }, "← Webhooks")), h("h1", {}, "Webhook endpoint"), h("div", { class: "row" }, toggle, remove), panel("Endpoint", info), panel("Deliveries", deliveries));
  return every(3000, refresh);
}

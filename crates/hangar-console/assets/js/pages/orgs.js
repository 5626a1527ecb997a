// Organizations and their quotas. Everyone sees their own; operators see
// every organization, change quotas and create organizations.

import { api, get, patch, enc, session } from "../api.js";
import { h, fill, table, panel, attempt, field, badge } from "../ui.js";

export async function render(main) {
  const operator = Boolean(session.me?.is_operator);
  const body = h("div", { id: "orgs-table" });
  const created = h("div", { "aria-live": "polite" });
  async function refresh() {
    const orgs = await get("/v1/organizations");
    fill(body, table([
      { label: "Name", value: (o) => o.name },
      { label: "ID", value: (o) => h("code", {}, o.id) },
      { label: "Operator", value: (o) => (o.is_operator ? badge("operator") : "") },
      { label: "Most instances", value: (o) => (operator ? quotaForm(o, refresh) : String(o.quotas?.max_instances ?? "—")) },
    ], orgs, { empty: "No organizations." }));
  }
  const parts = [h("h1", {}, "Organizations"), panel(operator ? "All organizations" : "Your organization", body)];
  if (operator) {
    const name = h("input", { id: "org-name", required: true });
    const email = h("input", { id: "org-email", type: "email", required: true });
    const quota = h("input", { id: "org-quota", type: "number", min: 0, value: 50 });
    const form = h("form", { class: "row" }, field("Name", name), field("Admin email", email), field("Most instances", quota), h("button", { type: "submit" }, "Create organization"));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = await attempt(() => api("POST", "/v1/organizations", { name: name.value.trim(), admin_email: email.value.trim(), max_instances: Number(quota.value) }).then((j) => j.data), "Organization created");
      if (!out) return;
      form.reset();
      fill(created, h("div", { class: "secret-once" }, h("p", {}, `The admin key of ${out.organization?.name} — shown this once:`), h("code", {}, out.api_key?.key ?? JSON.stringify(out.api_key))));
      refresh();
    });
    parts.push(panel("Create an organization", form, created));
  }
  fill(main, ...parts);
  await refresh();
}

function quotaForm(org, refresh) {
  const input = h("input", { type: "number", min: 0, value: org.quotas?.max_instances ?? 0, "aria-label": `Most instances of ${org.name}`, style: "width:6rem" });
  const form = h("form", { class: "row" }, input, h("button", { type: "submit", class: "secondary" }, "Save"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (await attempt(() => patch(`/v1/organizations/${enc(org.id)}`, { max_instances: Number(input.value) }), `Quota of ${org.name} saved`)) refresh();
  });
  return form;
}

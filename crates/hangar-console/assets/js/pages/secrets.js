// Secrets: names only (the API never answers a value), create or replace,
// delete. Agents reference them as ${secrets.NAME}.

import { api, get, del, enc } from "../api.js";
import { h, fill, table, fmt, panel, attempt, confirmAction, field } from "../ui.js";

export async function render(main) {
  const body = h("div", { id: "secrets-table" });
  const name = h("input", { id: "secret-name", required: true, pattern: "[A-Za-z_][A-Za-z0-9_]*" });
  const value = h("input", { id: "secret-value", type: "password", required: true, autocomplete: "off" });
  const form = h("form", { class: "row" }, field("Name", name), field("Value", value), h("button", { type: "submit" }, "Save secret"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (await attempt(() => api("POST", "/v1/secrets", { name: name.value.trim(), value: value.value }), `Saved ${name.value.trim()}`)) {
      form.reset();
      refresh();
    }
  });
  async function refresh() {
    const secrets = await get("/v1/secrets");
    fill(body, table([
      { label: "Name", value: (s) => h("code", {}, s.name) },
      { label: "Reference", value: (s) => h("code", {}, `\${secrets.${s.name}}`) },
      { label: "Changed", value: (s) => fmt.time(s.updated_at) },
      { label: "", value: (s) => h("button", {
          type: "button", class: "danger", "aria-label": `Delete ${s.name}`,
          onclick: async () => {
            if (!(await confirmAction(`Delete the secret ${s.name}? Agents referring to it fail to start.`, "Delete"))) return;
            await attempt(() => del(`/v1/secrets/${enc(s.name)}`), `Deleted ${s.name}`);
            refresh();
          },
        }, "Delete") },
    ], secrets, { empty: "No secrets." }));
  }
  fill(main, h("h1", {}, "Secrets"), panel("Create or replace", h("p", { class: "muted" }, "Values are stored encrypted and never shown again."), form), panel("Secrets", body));
  await refresh();
}

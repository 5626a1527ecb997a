// API keys: create (the key is shown this once), list, revoke. Revoking the
// key this tab is signed in with signs it out.

import { api, get, del, enc, session, signOut } from "../api.js";
import { h, fill, table, fmt, panel, attempt, confirmAction, field, badge } from "../ui.js";

export async function render(main) {
  const body = h("div", { id: "keys-table" });
  const created = h("div", { "aria-live": "polite" });
  const name = h("input", { id: "key-name", required: true });
  const form = h("form", { class: "row" }, field("Name", name), h("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = await attempt(() => api("POST", "/v1/api_keys", { name: name.value.trim() }).then((j) => j.data), "Key created");
    if (!key) return;
    form.reset();
    const value = h("code", { id: "new-key" }, key.key);
    fill(created, h("div", { class: "secret-once" },
      h("p", {}, "The new key ", h("strong", {}, key.name), " — copy it now, it is shown this once:"),
      value, " ",
      h("button", { type: "button", class: "secondary", onclick: () => navigator.clipboard?.writeText(key.key).then(() => attempt(async () => {}, "Copied")) }, "Copy")));
    refresh();
  });
  async function refresh() {
    const keys = await get("/v1/api_keys");
    fill(body, table([
      { label: "Name", value: (k) => k.name },
      { label: "Key", value: (k) => h("code", {}, `${k.prefix}…`) },
      { label: "Created", value: (k) => fmt.time(k.created_at) },
      { label: "Last used", value: (k) => fmt.time(k.last_used_at) },
      { label: "State", value: (k) => (k.revoked_at ? badge("revoked") : k.id === session.me?.api_key_id ? badge("this tab") : badge("active")) },
      { label: "", value: (k) => (k.revoked_at ? "" : h("button", {
          type: "button", class: "danger", "aria-label": `Revoke ${k.name}`, dataset: { key: k.id },
          onclick: async () => {
            const own = k.id === session.me?.api_key_id;
            if (!(await confirmAction(`Revoke ${k.name} (${k.prefix}…)?${own ? " This tab is signed in with it: you will be signed out." : ""}`, "Revoke"))) return;
            if (!(await attempt(() => del(`/v1/api_keys/${enc(k.id)}`), `Revoked ${k.name}`))) return;
            if (own) signOut("The key this tab used was revoked: you have been signed out.");
            else refresh();
          },
        }, "Revoke")) },
    ], keys, { empty: "No keys." }));
  }
  fill(main, h("h1", {}, "API keys"), panel("Create a key", form, created), panel("Keys", body));
  await refresh();
}

// Sign-in: an API key, checked with `GET /v1/me`, kept in this tab only.

import { signIn } from "../api.js";
import { h, fill } from "../ui.js";

export function render(main, { onSignedIn }) {
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true, size: 48, spellcheck: "false" });
  const error = h("p", { role: "alert", class: "muted", id: "signin-error" });
  const form = h("form", { class: "panel", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to Hangar"),
    h("p", { class: "muted" }, "Paste an API key (hgr_…). It is kept in this browser tab only, and sent to this server as a bearer token."),
    h("div", { class: "row" }, h("label", { for: "api-key" }, "API key", input), h("button", { type: "submit" }, "Sign in")),
    error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      await signIn(input.value.trim());
      if (!location.hash.startsWith("#/")) location.hash = "#/agents";
      onSignedIn();
    } catch (err) {
      error.textContent = err.status === 401 ? "That key is not accepted by this server." : err.message;
      input.focus();
    }
  });
  fill(main, form);
  input.focus();
}

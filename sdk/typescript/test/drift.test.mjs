// The OpenAPI document (sdk/openapi.json) is the truth; these fail when the
// client drifts from it: the generated types are stale, an operation of the
// document has no client method (or the table names one it no longer has),
// or a method named in the table does not send the request it claims to.
// No server needed: requests go to a recording fetch.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { generate, DOCUMENT, OUTPUT } from "../scripts/generate.mjs";
import { Hangar, OPERATIONS } from "../dist/index.js";

const METHODS = ["get", "put", "post", "delete", "patch"];
const document = JSON.parse(readFileSync(DOCUMENT, "utf8"));
const documented = Object.entries(document.paths).flatMap(([path, item]) =>
  METHODS.filter((m) => item[m]).map((m) => `${m.toUpperCase()} ${path}`),
);

test("src/schema.ts is what `npm run generate` makes of the document", async () => {
  const fresh = await generate(DOCUMENT);
  const checkedIn = readFileSync(OUTPUT, "utf8");
  assert.ok(fresh === checkedIn, "src/schema.ts is stale: run `npm run generate` in sdk/typescript and commit it");
});

test("every operation of the document has a client method, and no other is listed", () => {
  const covered = new Set(Object.keys(OPERATIONS));
  const missing = documented.filter((op) => !covered.has(op));
  const gone = [...covered].filter((op) => !documented.includes(op));
  assert.deepEqual(missing, [], "operations of the document the client lacks: add them to src/operations.ts");
  assert.deepEqual(gone, [], "src/operations.ts lists operations the document no longer has");
});

/** A client whose fetch records requests and answers a generic success. */
function recording() {
  const requests = [];
  const fetch = async (url, init = {}) => {
    requests.push({ url: new URL(url), method: init.method, headers: init.headers ?? {} });
    const body = { success: true, data: {}, pagination: { limit: 1, has_more: false, next_cursor: null }, logs: [] };
    return new Response(JSON.stringify(body), { status: 200, headers: { "content-type": "application/json" } });
  };
  return { client: new Hangar({ baseUrl: "http://hangar.test/base", apiKey: "hgr_test", fetch }), requests };
}

/** Arguments a method is called with: its path's values, then what it needs beyond them. */
function argumentsFor(op, values) {
  switch (op) {
    case "PUT /v1/uploads/{id}/content": {
      const url = `http://hangar.test/base/v1/uploads/${values[0]}/content?expires=1&signature=ab`;
      return [{ upload_url: url }, new Uint8Array([1, 2, 3])];
    }
    case "POST /instances/{org_id}/{instance_id}/exec":
      return [...values, ["true"]];
    case "POST /instances/{org_id}/{instance_id}/stdin":
      return [...values, "line\n"];
    case "POST /v1/agents/{id}/invoke":
      return [...values, { x: 1 }];
    default:
      return [...values, {}];
  }
}

test("each method in the table sends its operation's method and path", async () => {
  for (const [op, name] of Object.entries(OPERATIONS)) {
    const { client, requests } = recording();
    const [method, template] = op.split(" ");
    const names = [...template.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
    const values = names.map((n, i) => `${n}-value-${i}`);
    const [resource, fn] = name.includes(".") ? name.split(".") : [undefined, name];
    const target = resource ? client[resource] : client;
    assert.equal(typeof target?.[fn], "function", `${name} (for ${op}) is not a method of the client`);
    await target[fn](...argumentsFor(op, values));
    assert.equal(requests.length, 1, `${name} sent ${requests.length} requests`);
    const [sent] = requests;
    let path = template;
    names.forEach((n, i) => (path = path.replace(`{${n}}`, values[i])));
    assert.equal(sent.method, method, `${name}: method`);
    assert.equal(sent.url.pathname, `/base${path}`, `${name}: path`);
    const anonymous = op === "PUT /v1/uploads/{id}/content";
    assert.equal(sent.headers.authorization, anonymous ? undefined : "Bearer hgr_test", `${name}: key`);
  }
});

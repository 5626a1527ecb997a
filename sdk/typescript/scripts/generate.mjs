// Generates src/schema.ts, the client's types, from the OpenAPI document
// (sdk/openapi.json, the copy of the server's /openapi.json) with
// openapi-typescript. Run it with `npm run generate` whenever the document
// changes; test/drift.test.mjs fails while the checked-in output is stale.
//
// One repair is made on the way, and only while the document needs it:
// operationIds must be unique (OpenAPI 3.1, 4.8.10.1), and where two
// operations share one the generated `operations` interface would declare a
// property twice, which TypeScript rejects. Such operations are named
// `<tag>_<operationId>` here, with a warning, so the types still compile;
// once the document's ids are unique this does nothing.

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString, COMMENT_HEADER } from "openapi-typescript";

const here = dirname(fileURLToPath(import.meta.url));
export const DOCUMENT = join(here, "..", "..", "openapi.json");
export const OUTPUT = join(here, "..", "src", "schema.ts");
const METHODS = ["get", "put", "post", "delete", "patch", "options", "head", "trace"];

/** The document with duplicate operationIds qualified by their tag. */
export function withUniqueOperationIds(document, warn = () => {}) {
  const doc = structuredClone(document);
  const uses = new Map();
  for (const item of Object.values(doc.paths ?? {})) {
    for (const method of METHODS) {
      const id = item[method]?.operationId;
      if (id) uses.set(id, (uses.get(id) ?? 0) + 1);
    }
  }
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (op?.operationId && uses.get(op.operationId) > 1) {
        const renamed = `${op.tags?.[0] ?? method}_${op.operationId}`;
        warn(`operationId ${op.operationId} of ${method.toUpperCase()} ${path} is not unique: typed as ${renamed}`);
        op.operationId = renamed;
      }
    }
  }
  return doc;
}

/** The text of src/schema.ts for the document at `path`. */
export async function generate(path = DOCUMENT, warn = () => {}) {
  const document = withUniqueOperationIds(JSON.parse(readFileSync(path, "utf8")), warn);
  const ast = await openapiTS(document);
  return COMMENT_HEADER + astToString(ast);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = await generate(DOCUMENT, (message) => console.warn(`warning: ${message}`));
  writeFileSync(OUTPUT, text);
  console.log(`wrote ${OUTPUT}`);
}

/**
 * Which client method calls each operation of the OpenAPI document. The
 * document is the truth: test/drift.test.mjs fails when an operation of it
 * is missing here (the client does not cover it), when an entry here is no
 * longer in it, and when a method named here does not send that request.
 * Keys are `METHOD /path/template`, as the document spells them (its
 * operationIds are not all unique, its paths are); the type below makes a
 * path the document does not have a compile error too.
 */

import type { PathTemplate } from "./http.js";

type OperationKey = `${"GET" | "PUT" | "POST" | "DELETE" | "PATCH"} ${PathTemplate}`;

export const OPERATIONS = {
  "POST /instances": "instances.create",
  "GET /instances/by_org_id/{org_id}": "instances.list",
  "GET /instances/status/{org_id}/{instance_id}": "instances.status",
  "GET /instances/{instance_id}": "instances.get",
  "PUT /instances/{instance_id}": "instances.update",
  "DELETE /instances/{instance_id}": "instances.delete",
  "POST /instances/{org_id}/{instance_id}/exec": "instances.exec",
  "GET /instances/{org_id}/{instance_id}/logs": "instances.logs",
  "POST /instances/{org_id}/{instance_id}/stdin": "instances.stdin",
  "GET /metrics": "metrics.scrape",
  "GET /v1/agents": "agents.list",
  "POST /v1/agents": "agents.create",
  "GET /v1/agents/{id}": "agents.get",
  "DELETE /v1/agents/{id}": "agents.delete",
  "PATCH /v1/agents/{id}": "agents.update",
  "GET /v1/agents/{id}/builds": "builds.list",
  "POST /v1/agents/{id}/invoke": "agents.invoke",
  "GET /v1/agents/{id}/logs": "agents.logs",
  "GET /v1/agents/{id}/metrics": "agents.metrics",
  "POST /v1/agents/{id}/redeploy": "agents.redeploy",
  "POST /v1/agents/{id}/start": "agents.start",
  "POST /v1/agents/{id}/stop": "agents.stop",
  "GET /v1/api_keys": "apiKeys.list",
  "POST /v1/api_keys": "apiKeys.create",
  "DELETE /v1/api_keys/{id}": "apiKeys.revoke",
  "GET /v1/builds/{id}": "builds.get",
  "GET /v1/builds/{id}/logs": "builds.logs",
  "GET /v1/clouds": "clouds.list",
  "POST /v1/clouds": "clouds.create",
  "GET /v1/clouds/{id}": "clouds.get",
  "GET /v1/events": "events.list",
  "GET /v1/instances/{id}/metrics": "instances.metrics",
  "GET /v1/jobs": "jobs.list",
  "GET /v1/jobs/{id}": "jobs.get",
  "POST /v1/jobs/{id}/cancel": "jobs.cancel",
  "GET /v1/me": "me",
  "GET /v1/nodes": "nodes.list",
  "POST /v1/nodes/{id}/drain": "nodes.drain",
  "DELETE /v1/nodes/{id}/drain": "nodes.undrain",
  "GET /v1/agents/{id}/sessions": "sessions.list",
  "GET /v1/sessions/{id}": "sessions.get",
  "DELETE /v1/sessions/{id}": "sessions.delete",
  "GET /v1/organizations": "organizations.list",
  "POST /v1/organizations": "organizations.create",
  "GET /v1/organizations/{id}": "organizations.get",
  "PATCH /v1/organizations/{id}": "organizations.update",
  "GET /v1/secrets": "secrets.list",
  "POST /v1/secrets": "secrets.put",
  "DELETE /v1/secrets/{name}": "secrets.delete",
  "POST /v1/tokens": "tokens.create",
  "POST /v1/uploads": "uploads.create",
  "PUT /v1/uploads/{id}/content": "uploads.putContent",
  "GET /v1/users": "users.list",
  "POST /v1/users": "users.create",
  "GET /v1/users/{id}": "users.get",
  "GET /v1/webhooks": "webhooks.list",
  "POST /v1/webhooks": "webhooks.create",
  "GET /v1/webhooks/{id}": "webhooks.get",
  "DELETE /v1/webhooks/{id}": "webhooks.delete",
  "PATCH /v1/webhooks/{id}": "webhooks.update",
  "GET /v1/webhooks/{id}/deliveries": "webhooks.deliveries",
  "POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver": "webhooks.redeliver",
} as const satisfies Partial<Record<OperationKey, string>>;

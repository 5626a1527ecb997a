/**
 * Names for the document's shapes, so callers write `Agent` rather than
 * `components["schemas"]["AgentObject"]`. Every one is a generated type;
 * nothing here is written by hand except the shapes the document only
 * describes in prose (the SSE events of streams, log lines, invoke answers).
 */

import type { Answer, Data, RequestBody } from "./http.js";

// Read off the operations rather than named by schema: the operations are
// what the client calls, and a schema renamed in the document (they are
// named after the server's types) changes nothing here.
export type Agent = Data<"/v1/agents/{id}", "get">;
export type CreateAgent = RequestBody<"/v1/agents", "post">;
export type UpdateAgent = RequestBody<"/v1/agents/{id}", "patch">;
export type AgentMetrics = Data<"/v1/agents/{id}/metrics", "get">;
export type InstanceMetricHistory = Data<"/v1/instances/{id}/metrics", "get">;
export type Source = CreateAgent["source"];
export type Build = Data<"/v1/builds/{id}", "get">;
export type BuildLog = Data<"/v1/builds/{id}/logs", "get">;
export type BuildLogLine = BuildLog["logs"][number];
export type Instance = Answer<"/instances/{instance_id}", "get">;
export type InstanceStatus = Answer<"/instances/status/{org_id}/{instance_id}", "get">;
export type CreateInstance = RequestBody<"/instances", "post">;
export type UpdateInstance = RequestBody<"/instances/{instance_id}", "put">;
export type Job = Data<"/v1/jobs/{id}", "get">;
export type Upload = Data<"/v1/uploads", "post">;
export type UploadReceived = Data<"/v1/uploads/{id}/content", "put">;
export type Secret = Data<"/v1/secrets", "post">;
export type Webhook = Data<"/v1/webhooks/{id}", "get">;
export type CreateWebhook = RequestBody<"/v1/webhooks", "post">;
export type UpdateWebhook = RequestBody<"/v1/webhooks/{id}", "patch">;
export type Delivery = Data<"/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", "post">;
export type ApiKey = Data<"/v1/api_keys", "post">;
export type Organization = Data<"/v1/organizations/{id}", "get">;
export type CreatedOrganization = Data<"/v1/organizations", "post">;
export type User = Data<"/v1/users/{id}", "get">;
export type Cloud = Data<"/v1/clouds/{id}", "get">;
export type Node = Data<"/v1/nodes", "get">[number];
export type Session = Data<"/v1/sessions/{id}", "get">;
export type SessionEnded = Data<"/v1/sessions/{id}", "delete">;
export type Event = Data<"/v1/events", "get">[number];
export type StreamToken = Data<"/v1/tokens", "post">;
export type Me = Answer<"/v1/me", "get">;
export type Deleted = Data<"/v1/agents/{id}", "delete">;
export type Pagination = Answer<"/v1/agents", "get">["pagination"];

/** A sync invocation's answer: the agent's output and usage. */
export interface InvokeResult {
  output: unknown;
  usage: unknown;
}

/** What an async invocation answers at once. */
export interface JobAccepted {
  job_id: string;
  status: string;
  poll_url: string;
}

/** An event of a streaming invocation. */
export type InvokeEvent =
  | { type: "start"; request_id: string }
  | { type: "chunk"; content: unknown }
  | { type: "done"; usage: unknown };

/** A line of an instance's (or agent's) log. */
export interface LogLine {
  timestamp: string;
  level: string;
  message: string;
  stream?: string;
  replica_id?: string;
}

/** A followed log line with its event id: pass it as `lastEventId` to resume after it. */
export interface LogEvent {
  id: string;
  line: LogLine;
}

/** An event of a followed build log: a line, then `done` with the build's outcome. */
export type BuildLogEvent =
  | { type: "line"; id: string; line: BuildLogLine }
  | { type: "done"; status: string; reason: string | null };

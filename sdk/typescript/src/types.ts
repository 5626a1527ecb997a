/**
 * Names for the document's schemas, so callers write `Agent` rather than
 * `components["schemas"]["AgentObject"]`. Every one is the generated type;
 * nothing here is written by hand except the shapes the document only
 * describes in prose (the SSE events of streams, log lines).
 */

import type { components } from "./schema.js";

type Schemas = components["schemas"];

export type Agent = Schemas["AgentObject"];
export type CreateAgent = Schemas["CreateAgent"];
export type UpdateAgent = Schemas["UpdateAgent"];
export type AgentMetrics = Schemas["AgentMetrics"];
export type Source = Schemas["Source"];
export type Build = Schemas["BuildObject"];
export type BuildLog = Schemas["BuildLog"];
export type BuildLogLine = Schemas["BuildLogLineObject"];
export type Instance = Schemas["InstanceObject"];
export type InstanceStatus = Schemas["InstanceStatusObject"];
export type CreateInstance = Schemas["CreateInstance"];
export type UpdateInstance = Schemas["UpdateInstance"];
export type Job = Schemas["JobObject"];
export type Upload = Schemas["UploadObject"];
export type UploadReceived = Schemas["UploadReceived"];
export type Secret = Schemas["SecretObject"];
export type Webhook = Schemas["WebhookObject"];
export type CreateWebhook = Schemas["CreateWebhook"];
export type UpdateWebhook = Schemas["UpdateWebhook"];
export type Delivery = Schemas["DeliveryObject"];
export type ApiKey = Schemas["ApiKeyObject"];
export type Organization = Schemas["OrganizationObject"];
export type CreatedOrganization = Schemas["CreatedOrganization"];
export type User = Schemas["UserObject"];
export type Cloud = Schemas["CloudObject"];
export type Node = Schemas["NodeObject"];
export type Event = Schemas["EventObject"];
export type StreamToken = Schemas["TokenObject"];
export type Me = Schemas["Me"];
export type Deleted = Schemas["Deleted"];
export type Pagination = Schemas["Pagination"];

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

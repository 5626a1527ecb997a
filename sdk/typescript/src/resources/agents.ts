/**
 * `/v1/agents`: the Agents API's agents, their invocations (sync, async as a
 * job, streamed), logs (read, followed with resume, or as a URL for a
 * browser's `EventSource`) and metrics.
 */

import { HangarError } from "../errors.js";
import { followEvents, type FollowOptions } from "../follow.js";
import type { Answer, CallOptions, Data, RequestBody, Transport } from "../http.js";
import { Page, paginate } from "../pagination.js";
import { readEvents } from "../sse.js";
import type {
  Agent,
  AgentMetrics,
  Deleted,
  InvokeEvent,
  InvokeResult,
  JobAccepted,
  LogEvent,
  LogLine,
} from "../types.js";
import { JobHandle, type Jobs } from "./jobs.js";
import type { Tokens } from "./tokens.js";

/** Query of `GET /v1/agents`. */
export interface ListAgents extends CallOptions {
  /** 1–100, default 50. */
  limit?: number;
  cursor?: string;
  /** Only agents on this cloud (ID or name). */
  cloud_id?: string;
}

/** Options of an invocation. */
export interface InvokeOptions extends CallOptions {
  /** Seconds to wait for the agent (1–3600, default 300). */
  timeout?: number;
  /** Extra headers passed to the agent. */
  headers?: Record<string, string>;
  /** A repeat with the same key answers from the first request (not with `stream`). */
  idempotencyKey?: string;
}

/** Query of `GET /v1/agents/{id}/logs`. */
export interface AgentLogQuery extends CallOptions {
  /** RFC 3339: only lines at or after. */
  since?: string;
  /** RFC 3339: only lines at or before. */
  until?: string;
  /** The newest this many (1–10000, default 100). */
  tail?: number;
  /** `debug`, `info`, `warn` or `error`: this level and above. */
  level?: string;
}

/** Options of a stream token URL. */
export interface StreamUrlOptions {
  /** The token's lifetime, 10–3600 s (default 300). */
  ttlSeconds?: number;
  /** `debug`, `info`, `warn` or `error`: this level and above. */
  level?: string;
}

/** The body of an invocation. */
function invocation(input: unknown, options: InvokeOptions, isAsync: boolean): RequestBody<"/v1/agents/{id}/invoke", "post"> {
  const body: RequestBody<"/v1/agents/{id}/invoke", "post"> = { input: (input ?? {}) as Record<string, never> };
  if (options.timeout !== undefined || options.headers) {
    body.options = {};
    if (options.timeout !== undefined) body.options.timeout = options.timeout;
    if (options.headers) body.options.headers = options.headers;
  }
  if (isAsync) body.async = true;
  return body;
}

/** `ttl_seconds` of a token request, when asked for. */
export function ttl(options: StreamUrlOptions): { ttl_seconds?: number } {
  return options.ttlSeconds === undefined ? {} : { ttl_seconds: options.ttlSeconds };
}

/** `/v1/agents`. */
export class Agents {
  constructor(
    private readonly transport: Transport,
    private readonly jobs: Jobs,
    private readonly tokens: Tokens,
  ) {}

  /** One page of agents, newest first; iterate it for every agent. */
  async list(query: ListAgents = {}): Promise<Page<Agent>> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<Answer<"/v1/agents", "get">>("GET", "/v1/agents", { query: q, signal });
    return new Page<Agent>(answer, (cursor) => this.list({ ...query, cursor }));
  }

  /** Every agent, a page at a time. */
  iterate(query: ListAgents = {}): AsyncGenerator<Agent> {
    return paginate(() => this.list(query));
  }

  /** Creates an agent and queues its first build. */
  create(body: RequestBody<"/v1/agents", "post">, options: CallOptions = {}): Promise<Agent> {
    return this.transport.data<Data<"/v1/agents", "post">>("POST", "/v1/agents", { body, signal: options.signal });
  }

  get(id: string, options: CallOptions = {}): Promise<Agent> {
    return this.transport.data<Data<"/v1/agents/{id}", "get">>("GET", "/v1/agents/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  update(id: string, body: RequestBody<"/v1/agents/{id}", "patch">, options: CallOptions = {}): Promise<Agent> {
    return this.transport.data<Data<"/v1/agents/{id}", "patch">>("PATCH", "/v1/agents/{id}", {
      params: { id },
      body,
      signal: options.signal,
    });
  }

  delete(id: string, options: CallOptions = {}): Promise<Deleted> {
    return this.transport.data<Data<"/v1/agents/{id}", "delete">>("DELETE", "/v1/agents/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  start(id: string, options: CallOptions = {}): Promise<Agent> {
    return this.transport.data<Data<"/v1/agents/{id}/start", "post">>("POST", "/v1/agents/{id}/start", {
      params: { id },
      signal: options.signal,
    });
  }

  stop(id: string, options: CallOptions = {}): Promise<Agent> {
    return this.transport.data<Data<"/v1/agents/{id}/stop", "post">>("POST", "/v1/agents/{id}/stop", {
      params: { id },
      signal: options.signal,
    });
  }

  /** Builds again (from `source` when given: it becomes the agent's). */
  redeploy(
    id: string,
    body: NonNullable<RequestBody<"/v1/agents/{id}/redeploy", "post">> = {},
    options: CallOptions = {},
  ): Promise<Agent> {
    return this.transport.data<Data<"/v1/agents/{id}/redeploy", "post">>("POST", "/v1/agents/{id}/redeploy", {
      params: { id },
      body,
      signal: options.signal,
    });
  }

  /** Figures over `window` (`1h`, `24h`, `7d`), with their `series` in steps of `step` (`60`, `5m`…). */
  metrics(id: string, query: { window?: string; step?: string } & CallOptions = {}): Promise<AgentMetrics> {
    const { signal, ...q } = query;
    return this.transport.data<Data<"/v1/agents/{id}/metrics", "get">>("GET", "/v1/agents/{id}/metrics", {
      params: { id },
      query: q,
      signal,
    });
  }

  /** Invokes the agent and waits for its answer. */
  async invoke(id: string, input: unknown, options: InvokeOptions = {}): Promise<InvokeResult> {
    return this.transport.data<InvokeResult>("POST", "/v1/agents/{id}/invoke", {
      params: { id },
      body: invocation(input, options, false),
      headers: options.idempotencyKey ? { "idempotency-key": options.idempotencyKey } : {},
      signal: options.signal,
    });
  }

  /** Queues an invocation as a job: wait for it or cancel it with the handle. */
  async submit(id: string, input: unknown, options: InvokeOptions = {}): Promise<JobHandle> {
    const accepted = await this.transport.data<JobAccepted>("POST", "/v1/agents/{id}/invoke", {
      params: { id },
      body: invocation(input, options, true),
      headers: options.idempotencyKey ? { "idempotency-key": options.idempotencyKey } : {},
      signal: options.signal,
    });
    return new JobHandle(this.jobs, accepted.job_id, accepted.status);
  }

  /**
   * Invokes the agent as a stream: `start`, `chunk`…, `done`. A failure
   * after the start arrives as an `error` event, thrown here as a
   * {@link HangarError} with its code (status 200: the stream had begun).
   * Leaving the loop early closes the connection, which the agent sees.
   */
  async *stream(id: string, input: unknown, options: Omit<InvokeOptions, "idempotencyKey"> = {}): AsyncGenerator<InvokeEvent> {
    const response = await this.transport.send("POST", "/v1/agents/{id}/invoke", {
      params: { id },
      body: invocation(input, options, false),
      headers: { accept: "text/event-stream" },
      signal: options.signal,
    });
    if (!response.body) throw new Error("the stream has no body");
    for await (const event of readEvents(response.body)) {
      const data = JSON.parse(event.data) as { type?: string; error?: { code?: string; message?: string } };
      if (data.type === "error") {
        const error = data.error ?? {};
        throw new HangarError(
          response.status,
          error.code ?? "STREAM_ERROR",
          error.message ?? "the stream failed",
          error as Record<string, unknown>,
          response.headers.get("x-request-id") ?? undefined,
        );
      }
      yield data as InvokeEvent;
      if (data.type === "done") return;
    }
  }

  /** Stored log lines of the agent's instance, oldest first. */
  logs(id: string, query: AgentLogQuery = {}): Promise<LogLine[]> {
    const { signal, ...q } = query;
    return this.transport.data<LogLine[]>("GET", "/v1/agents/{id}/logs", { params: { id }, query: q, signal });
  }

  /**
   * Follows the agent's log: the newest lines (`tail`), then live ones as
   * they come. A broken stream is reopened after the last line seen; pass
   * `lastEventId` (a line's `id`) to resume a follow of before.
   */
  async *followLogs(id: string, options: FollowOptions & Omit<AgentLogQuery, "since" | "until"> = {}): AsyncGenerator<LogEvent> {
    const query = { follow: true, tail: options.tail, level: options.level };
    for await (const event of followEvents(this.transport, "/v1/agents/{id}/logs", { id }, query, options)) {
      yield { id: event.id ?? "", line: JSON.parse(event.data) as LogLine };
    }
  }

  /**
   * A URL that follows the agent's log with no API key in it: a read-only
   * stream token for this agent (`POST /v1/tokens`) in `access_token`. Give
   * it to a browser's `new EventSource(url)`, which cannot send headers; it
   * reconnects with `Last-Event-ID` on its own.
   */
  async logStreamUrl(id: string, options: StreamUrlOptions = {}): Promise<string> {
    const token = await this.tokens.create({ agent_id: id, ...ttl(options) });
    return this.transport.url("/v1/agents/{id}/logs", { id }, { follow: true, level: options.level, access_token: token.token });
  }
}

/**
 * The Instances API (served at the root, as in seed 000): instances of a
 * ready build, their status, `exec` and `stdin` into a replica, and logs —
 * read, followed with resume, or as an `EventSource`-ready URL.
 */

import { followEvents, type FollowOptions } from "../follow.js";
import type { Answer, CallOptions, Data, RequestBody, Transport } from "../http.js";
import { Page, paginate } from "../pagination.js";
import type { Instance, InstanceMetricHistory, InstanceStatus, LogEvent, LogLine } from "../types.js";
import { ttl, type StreamUrlOptions } from "./agents.js";
import type { Tokens } from "./tokens.js";

/** Query of `GET /instances/by_org_id/{org_id}`. */
export interface ListInstances extends CallOptions {
  limit?: number;
  cursor?: string;
  status?: string;
  agent_id?: string;
  user_id?: string;
}

/** Query of an instance's log. */
export interface InstanceLogQuery extends CallOptions {
  /** The newest this many lines. */
  lines?: number;
  /** RFC 3339: only lines at or after. */
  since?: string;
}

/** What `exec` answers: the command's output and its exit code. */
export interface ExecResult {
  output: string;
  /** From `x-exit-code`; `undefined` if the server sent none. */
  exitCode: number | undefined;
}

/** The Instances API. */
export class Instances {
  constructor(
    private readonly transport: Transport,
    private readonly tokens: Tokens,
  ) {}

  /** Deploys a new instance of a ready build. */
  create(body: RequestBody<"/instances", "post">, options: CallOptions = {}): Promise<Instance> {
    return this.transport.json<Answer<"/instances", "post">>("POST", "/instances", { body, signal: options.signal });
  }

  /** One page of an organization's instances; iterate it for all. */
  async list(orgId: string, query: ListInstances = {}): Promise<Page<Instance>> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<Answer<"/instances/by_org_id/{org_id}", "get">>(
      "GET",
      "/instances/by_org_id/{org_id}",
      { params: { org_id: orgId }, query: q, signal },
    );
    return new Page<Instance>(answer, (cursor) => this.list(orgId, { ...query, cursor }));
  }

  /** Every instance of an organization, a page at a time. */
  iterate(orgId: string, query: ListInstances = {}): AsyncGenerator<Instance> {
    return paginate(() => this.list(orgId, query));
  }

  /** An instance's metric history over `window` (`1h`, `24h`, `7d`) in steps of `step`. */
  metrics(id: string, query: { window?: string; step?: string } & CallOptions = {}): Promise<InstanceMetricHistory> {
    const { signal, ...q } = query;
    return this.transport.data<Data<"/v1/instances/{id}/metrics", "get">>("GET", "/v1/instances/{id}/metrics", {
      params: { id },
      query: q,
      signal,
    });
  }

  get(id: string, options: CallOptions = {}): Promise<Instance> {
    return this.transport.json<Answer<"/instances/{instance_id}", "get">>("GET", "/instances/{instance_id}", {
      params: { instance_id: id },
      signal: options.signal,
    });
  }

  update(id: string, body: RequestBody<"/instances/{instance_id}", "put">, options: CallOptions = {}): Promise<Instance> {
    return this.transport.json<Answer<"/instances/{instance_id}", "put">>("PUT", "/instances/{instance_id}", {
      params: { instance_id: id },
      body,
      signal: options.signal,
    });
  }

  /** Deletes an instance (`force`: without waiting for replicas to stop gracefully). */
  async delete(id: string, options: { force?: boolean } & CallOptions = {}): Promise<void> {
    await this.transport.send("DELETE", "/instances/{instance_id}", {
      params: { instance_id: id },
      query: { force: options.force },
      signal: options.signal,
    });
  }

  status(orgId: string, id: string, options: CallOptions = {}): Promise<InstanceStatus> {
    return this.transport.json<Answer<"/instances/status/{org_id}/{instance_id}", "get">>(
      "GET",
      "/instances/status/{org_id}/{instance_id}",
      { params: { org_id: orgId, instance_id: id }, signal: options.signal },
    );
  }

  /** Runs a command in a replica: its output and exit code. */
  async exec(orgId: string, id: string, argv: RequestBody<"/instances/{org_id}/{instance_id}/exec", "post">, options: CallOptions = {}): Promise<ExecResult> {
    const response = await this.transport.send("POST", "/instances/{org_id}/{instance_id}/exec", {
      params: { org_id: orgId, instance_id: id },
      body: argv,
      signal: options.signal,
    });
    const code = response.headers.get("x-exit-code");
    return { output: await response.text(), exitCode: code === null ? undefined : Number(code) };
  }

  /** Writes to a replica's stdin; what it printed in answer. */
  stdin(orgId: string, id: string, input: string, options: CallOptions = {}): Promise<string> {
    return this.transport.text("POST", "/instances/{org_id}/{instance_id}/stdin", {
      params: { org_id: orgId, instance_id: id },
      body: { input } satisfies RequestBody<"/instances/{org_id}/{instance_id}/stdin", "post">,
      signal: options.signal,
    });
  }

  /** Stored log lines, oldest first. */
  async logs(orgId: string, id: string, query: InstanceLogQuery = {}): Promise<LogLine[]> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<{ logs: LogLine[] }>("GET", "/instances/{org_id}/{instance_id}/logs", {
      params: { org_id: orgId, instance_id: id },
      query: q,
      signal,
    });
    return answer.logs;
  }

  /** Follows an instance's log, reopening a broken stream after the last line seen. */
  async *followLogs(orgId: string, id: string, options: FollowOptions & Pick<InstanceLogQuery, "lines"> = {}): AsyncGenerator<LogEvent> {
    const query = { follow: true, lines: options.lines };
    const params = { org_id: orgId, instance_id: id };
    for await (const event of followEvents(this.transport, "/instances/{org_id}/{instance_id}/logs", params, query, options)) {
      yield { id: event.id ?? "", line: JSON.parse(event.data) as LogLine };
    }
  }

  /** An `EventSource`-ready URL of the instance's log, with a stream token instead of the key. */
  async logStreamUrl(orgId: string, id: string, options: Omit<StreamUrlOptions, "level"> = {}): Promise<string> {
    const token = await this.tokens.create({ instance_id: id, ...ttl(options) });
    return this.transport.url(
      "/instances/{org_id}/{instance_id}/logs",
      { org_id: orgId, instance_id: id },
      { follow: true, access_token: token.token },
    );
  }
}

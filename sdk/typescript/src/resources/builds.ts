/**
 * Builds: an agent's builds, one build, its log — read, or followed until the
 * build ends (a last `done` event with its status), with resume.
 */

import { followEvents, type FollowOptions } from "../follow.js";
import type { Answer, CallOptions, Data, Transport } from "../http.js";
import { Page, paginate } from "../pagination.js";
import type { Build, BuildLog, BuildLogEvent, BuildLogLine } from "../types.js";
import { ttl, type StreamUrlOptions } from "./agents.js";
import type { Tokens } from "./tokens.js";

/** Query of a page of builds. */
export interface ListBuilds extends CallOptions {
  limit?: number;
  cursor?: string;
}

/** Builds of `/v1/agents/{id}/builds` and `/v1/builds`. */
export class Builds {
  constructor(
    private readonly transport: Transport,
    private readonly tokens: Tokens,
  ) {}

  /** One page of an agent's builds, newest first; iterate it for all. */
  async list(agentId: string, query: ListBuilds = {}): Promise<Page<Build>> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<Answer<"/v1/agents/{id}/builds", "get">>("GET", "/v1/agents/{id}/builds", {
      params: { id: agentId },
      query: q,
      signal,
    });
    return new Page<Build>(answer, (cursor) => this.list(agentId, { ...query, cursor }));
  }

  /** Every build of an agent, a page at a time. */
  iterate(agentId: string, query: ListBuilds = {}): AsyncGenerator<Build> {
    return paginate(() => this.list(agentId, query));
  }

  get(id: string, options: CallOptions = {}): Promise<Build> {
    return this.transport.data<Data<"/v1/builds/{id}", "get">>("GET", "/v1/builds/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  /** Stored lines of a build's log (`after` a line number, at most `limit`). */
  logs(id: string, query: { after?: number; limit?: number } & CallOptions = {}): Promise<BuildLog> {
    const { signal, ...q } = query;
    return this.transport.data<Data<"/v1/builds/{id}/logs", "get">>("GET", "/v1/builds/{id}/logs", {
      params: { id },
      query: q,
      signal,
    });
  }

  /** Follows a build's log until the build ends: its lines, then `done`. */
  async *followLogs(id: string, options: FollowOptions = {}): AsyncGenerator<BuildLogEvent> {
    const events = followEvents(this.transport, "/v1/builds/{id}/logs", { id }, { follow: true }, options, (e) => e.event === "done");
    for await (const event of events) {
      if (event.event === "done") {
        const done = JSON.parse(event.data) as { status: string; reason?: string | null };
        yield { type: "done", status: done.status, reason: done.reason ?? null };
        return;
      }
      yield { type: "line", id: event.id ?? "", line: JSON.parse(event.data) as BuildLogLine };
    }
  }

  /** An `EventSource`-ready URL of the build's log, with a stream token instead of the key. */
  async logStreamUrl(id: string, options: Omit<StreamUrlOptions, "level"> = {}): Promise<string> {
    const token = await this.tokens.create({ build_id: id, ...ttl(options) });
    return this.transport.url("/v1/builds/{id}/logs", { id }, { follow: true, access_token: token.token });
  }
}

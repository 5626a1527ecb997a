/** `/v1/events`: what happened in the organization, newest first. */

import type { Answer, CallOptions, Transport } from "../http.js";
import { Page, paginate } from "../pagination.js";
import type { Event } from "../types.js";

/** Query of `GET /v1/events`. */
export interface ListEvents extends CallOptions {
  limit?: number;
  cursor?: string;
  /** Only events of this type (`agent.deployed`, …). */
  type?: string;
}

/** `/v1/events`. */
export class Events {
  constructor(private readonly transport: Transport) {}

  /** One page of events; iterate it for all. */
  async list(query: ListEvents = {}): Promise<Page<Event>> {
    const { signal, ...q } = query;
    const answer = await this.transport.json<Answer<"/v1/events", "get">>("GET", "/v1/events", { query: q, signal });
    return new Page<Event>(answer, (cursor) => this.list({ ...query, cursor }));
  }

  /** Every event, a page at a time. */
  iterate(query: ListEvents = {}): AsyncGenerator<Event> {
    return paginate(() => this.list(query));
  }
}

/**
 * `/v1/sessions` and `/v1/agents/{id}/sessions`: sticky sessions. Every
 * invocation naming a session (`options.session_id`, or the
 * `X-Hangar-Session` header on instance URLs) goes to one replica while the
 * session lives; these list, read and end them.
 */

import type { CallOptions, Data, Transport } from "../http.js";
import type { Session, SessionEnded } from "../types.js";

/** Sticky sessions. */
export class Sessions {
  constructor(private readonly transport: Transport) {}

  /** An agent's live sessions, the most recently active first. */
  list(agentId: string, options: CallOptions = {}): Promise<Session[]> {
    return this.transport.data<Data<"/v1/agents/{id}/sessions", "get">>("GET", "/v1/agents/{id}/sessions", {
      params: { id: agentId },
      signal: options.signal,
    });
  }

  /** A live session. */
  get(id: string, options: CallOptions = {}): Promise<Session> {
    return this.transport.data<Data<"/v1/sessions/{id}", "get">>("GET", "/v1/sessions/{id}", {
      params: { id },
      signal: options.signal,
    });
  }

  /** Ends a session (`kill`: also stops its replica; another takes its place). */
  delete(id: string, options: { kill?: boolean } & CallOptions = {}): Promise<SessionEnded> {
    return this.transport.data<Data<"/v1/sessions/{id}", "delete">>("DELETE", "/v1/sessions/{id}", {
      params: { id },
      query: { kill: options.kill },
      signal: options.signal,
    });
  }
}

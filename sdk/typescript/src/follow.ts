/**
 * Following a log stream that may break: each event's `id` is its line
 * number, so after a disconnect the stream is opened again with
 * `Last-Event-ID` set to the last id seen and the server sends what came
 * after it — no line twice, none missed. That is what `EventSource` does in
 * a browser; this does it over `fetch`, which can also send `Authorization`.
 *
 * A stream that ends or breaks off is reopened after a backoff (reset once
 * events flow again); an answer that is an error (the agent was deleted,
 * the key revoked) is thrown, not retried: it would answer the same again.
 */

import { HangarError } from "./errors.js";
import type { Transport, Query } from "./http.js";
import { readEvents, type ServerSentEvent } from "./sse.js";
import { sleep } from "./wait.js";

/** How a follow behaves. */
export interface FollowOptions {
  /** Resume after this event id (a line number) instead of starting fresh. */
  lastEventId?: string;
  /** Reopen a stream that ended or broke off (default true). */
  reconnect?: boolean;
  /** Reopens in a row without an event in between before giving up (default 5). */
  maxRetries?: number;
  /** Ends the follow. */
  signal?: AbortSignal;
}

/** The events of a followed SSE endpoint, reopened with `Last-Event-ID` as needed. */
export async function* followEvents(
  transport: Transport,
  template: string,
  params: Record<string, string>,
  query: Query,
  options: FollowOptions,
  /** Whether an event ends the follow (a build's `done`). */
  isLast: (event: ServerSentEvent) => boolean = () => false,
): AsyncGenerator<ServerSentEvent> {
  let lastEventId = options.lastEventId;
  let failures = 0;
  const maxRetries = options.maxRetries ?? 5;
  for (;;) {
    let broke: unknown;
    try {
      const headers: Record<string, string> = { accept: "text/event-stream" };
      if (lastEventId !== undefined) headers["last-event-id"] = lastEventId;
      const response = await transport.send("GET", template, {
        params,
        query,
        headers,
        signal: options.signal,
      });
      if (!response.body) throw new Error("the stream has no body");
      for await (const event of readEvents(response.body)) {
        failures = 0;
        if (event.id !== undefined) lastEventId = event.id;
        yield event;
        if (isLast(event)) return;
      }
    } catch (err) {
      if (err instanceof HangarError || options.signal?.aborted) throw err;
      broke = err;
    }
    if (options.reconnect === false) {
      if (broke) throw broke;
      return;
    }
    failures += 1;
    if (failures > maxRetries) {
      throw broke ?? new Error(`the stream of ${template} kept ending without events`);
    }
    await sleep(Math.min(250 * 2 ** (failures - 1), 5000), options.signal);
  }
}

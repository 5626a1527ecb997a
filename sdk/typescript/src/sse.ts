/**
 * Server-Sent Events read from a `fetch` body, as the WHATWG spec parses them
 * (`data:` lines joined by newlines, `id:`, `event:`, comments and `retry:`
 * ignored, LF, CR or CRLF line ends, events split anywhere across chunks).
 * Not `EventSource`: it cannot send `Authorization` or a body, and a POST
 * (streaming invoke) needs both; this works the same in Node 20 and browsers.
 */

/** One event. */
export interface ServerSentEvent {
  /** `event:`, `message` when absent. */
  event: string;
  /** The `data:` lines, joined by `\n`. */
  data: string;
  /** `id:` of this event, if it had one. */
  id: string | undefined;
}

/** The events of an SSE body, in order, until it ends. */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data: string[] = [];
  let event = "";
  let id: string | undefined;
  let sawField = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      for (;;) {
        const end = lineEnd(buffer, done);
        if (end === undefined) break;
        const [line, rest] = end;
        buffer = rest;
        if (line === "") {
          if (sawField && data.length > 0) {
            yield { event: event || "message", data: data.join("\n"), id };
          }
          data = [];
          event = "";
          id = undefined;
          sawField = false;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        sawField = true;
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id" && !value.includes("\0")) id = value;
      }
      if (done) {
        // An event not closed by a blank line is dropped, as the spec says.
        return;
      }
    }
  } finally {
    // Leaving early (a `break` in the caller's loop) closes the connection.
    await reader.cancel().catch(() => {});
  }
}

/** The first line of `buffer` and what follows it, once it is whole. */
function lineEnd(buffer: string, atEnd: boolean): [string, string] | undefined {
  for (let i = 0; i < buffer.length; i++) {
    const c = buffer[i];
    if (c === "\n") return [buffer.slice(0, i), buffer.slice(i + 1)];
    if (c === "\r") {
      // A CR last in the buffer may be half of a CRLF still in flight.
      if (i + 1 === buffer.length && !atEnd) return undefined;
      const skip = buffer[i + 1] === "\n" ? 2 : 1;
      return [buffer.slice(0, i), buffer.slice(i + skip)];
    }
  }
  if (atEnd && buffer.length > 0) return [buffer, ""];
  return undefined;
}

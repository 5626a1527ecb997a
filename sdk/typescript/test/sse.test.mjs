// The SSE reader and the poll's backoff, without a server.

import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, readEvents } from "../dist/index.js";

/** A body that delivers `text` in pieces cut at `cuts`. */
function body(text, cuts) {
  const bytes = new TextEncoder().encode(text);
  const pieces = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    pieces.push(bytes.slice(start, cut));
    start = cut;
  }
  return new ReadableStream({
    start(controller) {
      for (const piece of pieces) controller.enqueue(piece);
      controller.close();
    },
  });
}

async function collect(stream) {
  const events = [];
  for await (const event of readEvents(stream)) events.push(event);
  return events;
}

const TEXT =
  ": a comment\n\nid: 7\ndata: {\"a\":1}\n\nevent: done\r\ndata: line one\r\ndata: line two\r\n\r\n" +
  "data:no space\rid: 9\r\rretry: 10\n\ndata: é unfinished";

test("events are read whatever the chunks' boundaries", async () => {
  const want = [
    { event: "message", data: '{"a":1}', id: "7" },
    { event: "done", data: "line one\nline two", id: undefined },
    { event: "message", data: "no space", id: "9" },
  ];
  const bytes = new TextEncoder().encode(TEXT).length;
  for (let cut = 0; cut <= bytes; cut++) {
    assert.deepEqual(await collect(body(TEXT, [cut])), want, `cut at ${cut}`);
  }
  // One byte at a time: a multi-byte character and CRLF split too.
  const everyByte = Array.from({ length: bytes - 1 }, (_, i) => i + 1);
  assert.deepEqual(await collect(body(TEXT, everyByte)), want);
});

test("polls back off from 250 ms by half each time, up to 5 s", () => {
  const delays = Array.from({ length: 12 }, (_, i) => backoffDelay(i));
  assert.deepEqual(delays.slice(0, 3), [250, 375, 562.5]);
  for (let i = 1; i < delays.length; i++) assert.ok(delays[i] >= delays[i - 1]);
  assert.equal(delays.at(-1), 5000);
  assert.equal(backoffDelay(0, { initialMs: 100, factor: 2, maxMs: 300 }), 100);
  assert.equal(backoffDelay(3, { initialMs: 100, factor: 2, maxMs: 300 }), 300);
});

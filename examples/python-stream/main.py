"""A standard-library streaming agent.

POST /invoke with {"prompt": …} (the Agents API's streaming example, "Write a
poem about AI") writes a short poem about the prompt's topic, always the same
for the same topic. Asked for `text/event-stream` (as Hangar's gateway does for
a streaming invoke) it streams the poem word by word as SSE events
({"content": " word"}), then {"usage": {"tokens": n}} and [DONE]; otherwise it
answers it whole, {"output": poem, "usage": {"tokens": n}}.

POST /invoke with {"text": …, "mode": …} shows the other ways an agent can stream:
- "sse" (the default): the words of "text" as SSE events ({"content": word}), a
  usage event, then [DONE];
- "text": the words as chunked text/plain, one HTTP chunk each;
- "json": {"output": text, "usage": {...}} in one piece;
- "endless": an SSE event every 50 ms until the caller goes away, which it
  records in /tmp/disconnects (one line per disconnect);
- "fail": answers 500.
"""
import json
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


POEM = """In silicon dreams {topic} wakes
and counts the light the morning makes;
it learns our words, it hums them back,
a lantern on a midnight track.
Not flesh, not stone, but something new:
{topic} keeps asking what is true,
and in the glow of what we make
we find ourselves, for {topic}'s sake."""


def topic_of(prompt):
    """What the poem is about: the words after "about" ("a poem about AI" → AI),
    else the whole prompt."""
    found = re.search(r"\babout\s+(.+)", prompt, re.IGNORECASE)
    topic = (found.group(1) if found else prompt).strip().rstrip(".!?")
    return topic or "silence"


def poem_chunks(prompt):
    """The poem as the pieces a model would stream: each word with the space or
    line break before it."""
    text = POEM.format(topic=topic_of(prompt))
    chunks = []
    for n, line in enumerate(text.split("\n")):
        for m, word in enumerate(line.split()):
            chunks.append(("" if n == 0 else "\n") + word if m == 0 else " " + word)
    return chunks


class Agent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_chunked(self, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def do_GET(self):
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def _poem(self, prompt):
        chunks = poem_chunks(prompt)
        usage = {"tokens": len(chunks)}
        print(f"INFO writing a poem about {topic_of(prompt)!r}: {len(chunks)} tokens", flush=True)
        if "text/event-stream" not in self.headers.get("Accept", ""):
            self._reply(200, {"output": "".join(chunks), "usage": usage})
            return
        self._start_chunked("text/event-stream")
        for chunk in chunks:
            self._chunk(b"data: " + json.dumps({"content": chunk}).encode() + b"\n\n")
            # As a model's tokens come: the caller sees the poem grow.
            time.sleep(0.02)
        self._chunk(b"data: " + json.dumps({"usage": usage}).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") or {}
        if isinstance(body, dict) and isinstance(body.get("prompt"), str) and "mode" not in body:
            self._poem(body["prompt"])
            return
        mode = body.get("mode", "sse")
        words = [w + " " for w in body.get("text", "").split()]
        if mode == "fail":
            self._reply(500, b"the agent broke", "text/plain")
        elif mode == "json":
            self._reply(200, {"output": "".join(words), "usage": {"words": len(words)}})
        elif mode == "text":
            self._start_chunked("text/plain; charset=utf-8")
            for word in words:
                self._chunk(word.encode())
                time.sleep(0.01)
            self._chunk(b"")
        elif mode == "endless":
            self._start_chunked("text/event-stream")
            try:
                n = 0
                while True:
                    self._chunk(b"data: {\"content\": \"tick %d\"}\n\n" % n)
                    n += 1
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                with open("/tmp/disconnects", "a") as f:
                    f.write(f"after {n} events\n")
                print(f"INFO caller went away after {n} events", flush=True)
                self.close_connection = True
        else:
            self._start_chunked("text/event-stream")
            for word in words:
                self._chunk(b"data: " + json.dumps({"content": word}).encode() + b"\n\n")
                time.sleep(0.01)
            self._chunk(b"data: " + json.dumps({"usage": {"words": len(words)}}).encode() + b"\n\n")
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

    def log_message(self, fmt, *args):
        sys.stderr.write("DEBUG " + (fmt % args) + "\n")


port = int(os.environ.get("PORT", "8080"))
print(f"INFO listening on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Agent).serve_forever()

"""A standard-library streaming agent. POST /invoke with {"mode": …}:
- "sse": the words of input "text" as SSE events ({"content": word}), a
  usage event, then [DONE];
- "text": the words as chunked text/plain, one HTTP chunk each;
- "json": {"output": text, "usage": {...}} in one piece;
- "endless": an SSE event every 50 ms until the caller goes away, which it
  records in /tmp/disconnects (one line per disconnect);
- "fail": answers 500.
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") or {}
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

"""A standard-library HTTP agent: GET /health, POST /invoke (echoes its input;
{"sleep": seconds} answers that much later)."""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Agent(BaseHTTPRequestHandler):
    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        if self.path == "/invoke":
            if isinstance(body, dict) and "sleep" in body:
                time.sleep(float(body["sleep"]))
            print(f"INFO invoked with {json.dumps(body)}", flush=True)
            self._reply(200, {"output": {"echo": body, "replica": os.environ.get("HANGAR_REPLICA_ID")}})
        else:
            self._reply(404, {"error": "not found"})

    def log_message(self, fmt, *args):
        sys.stderr.write("DEBUG " + (fmt % args) + "\n")


port = int(os.environ.get("PORT", "8080"))
print(f"INFO listening on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Agent).serve_forever()

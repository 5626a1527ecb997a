"""A standard-library HTTP agent that fails on request, for the error tests.
POST /invoke with a JSON object input:
  {"fail": "status"}   answers 500 with a short body
  {"fail": "garbled"}  answers 200 saying JSON, with a body that is not
  {"fail": "hangup"}   closes the connection without answering
  {"sleep": secs}      answers that much later
anything else is echoed as the output."""
import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Agent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status, data, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._reply(200, b'{"status": "ok"}')
        else:
            self._reply(404, b'{"error": "not found"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        if not isinstance(body, dict):
            body = {}
        if "sleep" in body:
            time.sleep(float(body["sleep"]))
        fail = body.get("fail")
        if fail == "status":
            self._reply(500, b"boom", "text/plain")
        elif fail == "garbled":
            self._reply(200, b"{this is not json")
        elif fail == "hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self._reply(200, json.dumps({"output": {"echo": body}}).encode())

    def log_message(self, fmt, *args):
        sys.stderr.write("DEBUG " + (fmt % args) + "\n")


port = int(os.environ.get("PORT", "8080"))
print(f"INFO listening on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Agent).serve_forever()

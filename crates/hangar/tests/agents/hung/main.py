"""An HTTP agent that hangs on request: GET /health answers 200 until
POST /invoke {"hang": true}, then 500 for good, as a wedged agent's would.
With HUNG_FROM_START=1 it is never healthy."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

hung = os.environ.get("HUNG_FROM_START") == "1"


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
            self._reply(500 if hung else 200, {"hung": hung})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self):
        global hung
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        if isinstance(body, dict) and body.get("hang"):
            hung = True
        self._reply(200, {"output": {"hung": hung, "replica": os.environ.get("HANGAR_REPLICA_ID")}})

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Agent).serve_forever()

"""An HTTP agent with a real dependency (langchain-core, installed by the
build into /app/.venv): POST /invoke {"name": …} answers a formatted prompt."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import langchain_core
from langchain_core.prompts import PromptTemplate

VERSION = "v1"
PROMPT = PromptTemplate.from_template("Hello, {name}!")


class Agent(BaseHTTPRequestHandler):
    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply(200 if self.path == "/health" else 404, {"status": "ok"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        name = body.get("name", "world") if isinstance(body, dict) else "world"
        self._reply(200, {"output": {
            "text": PROMPT.format(name=name),
            "version": VERSION,
            "langchain_core": langchain_core.__version__,
        }})

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Agent).serve_forever()

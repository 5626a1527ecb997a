"""A standard-library HTTP agent for the job tests. POST /invoke with a JSON
object input:
  {"n": 3}          answers {"output": {"n": 3, "doubled": 6}}
  {"sleep": secs}   works that long first (and stops early, logging
                    "aborted <job>", when the caller hangs up)
  {"fail": true}    answers 500
Every delivery is appended to /tmp/deliveries.log as "deliver <job id>". The
agent dedupes on X-Hangar-Job-Id: a job it already ran (or is running) is
answered from its first run, which alone appends "execute <job id>" to
/tmp/executions.log. /tmp/max_concurrency holds the most runs at once."""
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
RESULTS = {}  # job id -> threading.Event, then (status, body)
ANSWERS = {}
RUNNING = [0, 0]  # now, most


def log(path, line):
    with LOCK:
        with open(path, "a") as f:
            f.write(line + "\n")


class Agent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass

    def do_GET(self):
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def _caller_gone(self):
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _run(self, job, body):
        with LOCK:
            RUNNING[0] += 1
            RUNNING[1] = max(RUNNING[1], RUNNING[0])
            with open("/tmp/max_concurrency", "w") as f:
                f.write(str(RUNNING[1]))
        try:
            deadline = time.time() + float(body.get("sleep", 0))
            while time.time() < deadline:
                if self._caller_gone():
                    log("/tmp/deliveries.log", f"aborted {job}")
                    return None
                time.sleep(0.02)
            log("/tmp/executions.log", f"execute {job}")
            if body.get("fail"):
                return 500, {"error": "asked to fail"}
            n = body.get("n", 0)
            return 200, {"output": {"n": n, "doubled": n * 2}, "usage": {"tokens_used": 1}}
        finally:
            with LOCK:
                RUNNING[0] -= 1

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        if self.path != "/invoke":
            self._reply(404, {"error": "not found"})
            return
        if not isinstance(body, dict):
            body = {}
        job = self.headers.get("X-Hangar-Job-Id") or "none"
        log("/tmp/deliveries.log", f"deliver {job}")
        with LOCK:
            first = job not in RESULTS or job == "none"
            if first:
                RESULTS[job] = threading.Event()
            done = RESULTS[job]
        if first:
            answer = self._run(job, body)
            if answer is None:
                with LOCK:
                    del RESULTS[job]
                done.set()
                return
            ANSWERS[job] = answer
            done.set()
        else:
            done.wait()
            answer = ANSWERS.get(job) or (503, {"error": "first run aborted"})
        self._reply(*answer)

    def log_message(self, fmt, *args):
        pass


port = int(os.environ.get("PORT", "8080"))
print(f"INFO listening on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Agent).serve_forever()

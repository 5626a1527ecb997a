"""Hangar's agent contract, served with the standard library only.

An agent written with this module needs no web framework at run time: it
decorates its functions and calls :func:`run`::

    from hangar import agent

    @agent.invoke
    def answer(input): return {"echo": input}

    agent.run()

What Hangar expects of an agent (and what this serves):

- HTTP on ``$PORT``: ``GET /health`` answers 2xx when ready; ``POST /invoke``
  takes the caller's ``input`` as its JSON body and answers JSON — an object
  with ``output`` (and ``usage``) is taken as such, any other JSON is the
  output; asked for ``text/event-stream``, it may stream Server-Sent Events.
- stdin agents read lines on stdin and write one line on stdout per answer.
- Logs are lines on stdout/stderr; a JSON line with ``level`` and
  ``message`` is read with its level.
- Hangar stops a replica with ``SIGTERM`` and waits a grace period before
  ``SIGKILL``: requests in flight should finish within it.

Threads, not asyncio: :class:`http.server.ThreadingHTTPServer` gives each
connection a thread, so a slow handler does not hold the others up, and a
handler may block (call a model, a subprocess) without any ceremony.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional

__all__ = ["Agent", "Log", "invoke", "stream", "health", "stdin", "run", "log", "default"]

Handler = Callable[..., Any]


class Log:
    """Writes one JSON line per message to stdout, which Hangar reads with its level."""

    def __init__(self, stream=None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, level: str, message: str, fields: dict) -> None:
        line = {"level": level, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line.update(fields)
        text = json.dumps(line, default=str)
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    def debug(self, message: str, **fields: Any) -> None:
        self._write("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._write("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._write("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._write("error", message, fields)


class Agent:
    """The handlers of one agent and the server that calls them."""

    def __init__(self) -> None:
        self.log = Log()
        self._invoke: Optional[Handler] = None
        self._stream: Optional[Handler] = None
        self._health: Optional[Handler] = None
        self._stdin: Optional[Handler] = None
        self._server: Optional[ThreadingHTTPServer] = None
        self._stopping = threading.Event()
        # Open connections, and whether each is in the middle of a request:
        # at a stop, the idle ones (kept alive between requests) are closed
        # so that they do not hold the stop up.
        self._connections: dict = {}
        self._connections_lock = threading.Lock()

    # Registration: each decorator returns the function unchanged.

    def invoke(self, fn: Handler) -> Handler:
        """``fn(input) -> output``: a whole answer to ``POST /invoke``."""
        self._invoke = fn
        return fn

    def stream(self, fn: Handler) -> Handler:
        """``fn(input)`` yields chunks; its return value, if any, is the usage."""
        self._stream = fn
        return fn

    def health(self, fn: Handler) -> Handler:
        """``fn() -> bool``: whether the agent is ready (``GET /health``)."""
        self._health = fn
        return fn

    def stdin(self, fn: Handler) -> Handler:
        """``fn(line) -> line``: one answer per line read on stdin."""
        self._stdin = fn
        return fn

    # Serving.

    def run(
        self,
        port: Optional[int] = None,
        host: str = "0.0.0.0",
        invoke_path: str = "/invoke",
        health_path: str = "/health",
    ) -> None:
        """Serves until ``SIGTERM`` (or ``SIGINT``), or until stdin ends for
        an agent that only reads stdin. Requests in flight finish first."""
        http = self._invoke is not None or self._stream is not None
        if not http and self._stdin is None:
            raise RuntimeError("no handler: decorate a function with @agent.invoke, @agent.stream or @agent.stdin")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self._stdin is not None:
            reader = threading.Thread(target=self._read_stdin, name="stdin", daemon=True)
            reader.start()
        if not http:
            while not self._stopping.is_set() and reader.is_alive():
                reader.join(0.2)
            self.log.info("stopped")
            return
        port = int(os.environ.get("PORT", "8080")) if port is None else port
        server = ThreadingHTTPServer((host, port), _handler_class(self, invoke_path, health_path))
        # Requests in flight are waited for when the server closes.
        server.daemon_threads = False
        server.block_on_close = True
        self._server = server
        self.log.info("listening", port=port)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            self._close_idle()
            server.server_close()
            self.log.info("stopped")

    def _close_idle(self) -> None:
        import socket

        with self._connections_lock:
            idle = [conn for conn, busy in self._connections.items() if not busy]
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, conn: Any, busy: Optional[bool]) -> None:
        with self._connections_lock:
            if busy is None:
                self._connections.pop(conn, None)
            else:
                self._connections[conn] = busy

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.log.info("stopping", signal=signal.Signals(signum).name)
        server = self._server
        if server is not None:
            # shutdown() waits for serve_forever, which runs on this thread.
            threading.Thread(target=server.shutdown, name="shutdown").start()

    def _read_stdin(self) -> None:
        assert self._stdin is not None
        for line in sys.stdin:
            if self._stopping.is_set():
                break
            try:
                answer = self._stdin(line.rstrip("\n"))
            except Exception as err:  # the agent's bug: said, not fatal
                self.log.error("stdin handler failed", error=repr(err), traceback=traceback.format_exc())
                continue
            if answer is None:
                continue
            text = answer if isinstance(answer, str) else json.dumps(answer, default=str)
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    # What a request gets.

    def _answer(self, body: Any) -> Any:
        if self._invoke is not None:
            result = self._invoke(body)
        else:
            assert self._stream is not None
            chunks = list(_chunks_of(self._stream(body)))
            result = "".join(chunks) if all(isinstance(c, str) for c in chunks) else chunks
        if isinstance(result, dict) and "output" in result:
            return result
        return {"output": result}

    def _ready(self) -> bool:
        if self._health is None:
            return True
        return bool(self._health())


def _chunks_of(gen: Iterable[Any]) -> Iterable[Any]:
    yield from gen


def _handler_class(agent: Agent, invoke_path: str, health_path: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hangar-agent"

        def setup(self) -> None:
            super().setup()
            agent._track(self.connection, False)

        def finish(self) -> None:
            agent._track(self.connection, None)
            super().finish()

        def handle_one_request(self) -> None:
            # Idle until the request line comes; busy until its answer is out.
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            agent._track(self.connection, True)
            try:
                if len(self.raw_requestline) > 65536:
                    self.send_error(414)
                    return
                if not self.parse_request():
                    return
                method = getattr(self, "do_" + self.command, None)
                if method is None:
                    self.send_error(501, f"Unsupported method ({self.command!r})")
                    return
                method()
                self.wfile.flush()
            finally:
                if agent._stopping.is_set():
                    # No next request on this connection: the agent stops.
                    self.close_connection = True
                agent._track(self.connection, False)

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path.split("?")[0] != health_path:
                self._reply(404, {"error": {"message": "not found"}})
                return
            try:
                ready = agent._ready()
            except Exception as err:
                agent.log.warning("health check failed", error=repr(err))
                ready = False
            self._reply(200 if ready else 503, {"status": "ok" if ready else "not ready"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != invoke_path:
                self._reply(404, {"error": {"message": "not found"}})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
            except (ValueError, json.JSONDecodeError) as err:
                self._reply(400, {"error": {"message": f"the body is not JSON: {err}"}})
                return
            wants_stream = "text/event-stream" in (self.headers.get("Accept") or "").split(",")[0]
            if wants_stream and agent._stream is not None:
                self._serve_stream(body)
                return
            started = time.monotonic()
            try:
                answer = agent._answer(body)
            except Exception as err:
                agent.log.error("invoke handler failed", error=repr(err), traceback=traceback.format_exc())
                self._reply(500, {"error": {"message": str(err) or type(err).__name__}})
                return
            self._reply(200, answer)
            agent.log.debug("invoked", ms=round((time.monotonic() - started) * 1000, 1))

        def _serve_stream(self, body: Any) -> None:
            assert agent._stream is not None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            gen = agent._stream(body)
            usage = None
            try:
                while True:
                    try:
                        chunk = next(gen)
                    except StopIteration as done:
                        usage = done.value
                        break
                    event = json.dumps({"content": chunk}, default=str)
                    self._chunk(b"data: " + event.encode() + b"\n\n")
            except (BrokenPipeError, ConnectionResetError):
                agent.log.info("the caller went away mid-stream")
                gen.close()
                self.close_connection = True
                return
            except Exception as err:
                agent.log.error("stream handler failed", error=repr(err), traceback=traceback.format_exc())
                event = json.dumps({"error": {"message": str(err) or type(err).__name__}})
                self._chunk(b"event: error\ndata: " + event.encode() + b"\n\n")
                self._chunk(b"")
                return
            if usage is not None:
                self._chunk(b"data: " + json.dumps({"usage": usage}, default=str).encode() + b"\n\n")
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def log_message(self, fmt: str, *args: Any) -> None:
            agent.log.debug(fmt % args)

    return Handler


#: The agent of this process: ``from hangar import agent`` and decorate.
default = Agent()
log = default.log
invoke = default.invoke
stream = default.stream
health = default.health
stdin = default.stdin
run = default.run

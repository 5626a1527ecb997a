"""A standard-library web app behind an instance URL:
- any method on any path (but those below): JSON with the method, path,
  query, headers and the length of the body it read;
- GET /health: 200;
- GET /stream: a chunked answer of numbered lines, one every 50 ms, until
  the caller goes away;
- GET /ws: a websocket that answers each text message with "echo: <text>".
"""
import base64
import hashlib
import json
import os
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self):
        if self.path == "/health":
            return self._reply(200, {"status": "ok"})
        if self.path == "/stream":
            return self._stream()
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        length = int(self.headers.get("Content-Length") or 0)
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        elif length:
            body = self.rfile.read(length)
        path, _, query = self.path.partition("?")
        self._reply(200, {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "label": os.environ.get("APP_LABEL"),
        })

    def _stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        n = 0
        try:
            while True:
                line = b"line %d\n" % n
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                n += 1
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _echo

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App", "web")
        self.end_headers()
        self.wfile.write(data)

    def _websocket(self):
        accept = base64.b64encode(
            hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                break
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                break
            if opcode == 1:
                answer = b"echo: " + payload
                self.wfile.write(bytes([0x81, len(answer)]) + answer)
                self.wfile.flush()
        self.close_connection = True

    def log_message(self, fmt, *args):
        sys.stderr.write("DEBUG " + (fmt % args) + "\n")


port = int(os.environ.get("PORT", "8080"))
print(f"INFO listening on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), App).serve_forever()

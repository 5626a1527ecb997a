"""A webhook receiver for the tests: verifies every delivery with the
`standardwebhooks` package (an implementation of the Standard Webhooks
specification independent of Hangar's), and appends what it got to a JSON
lines file: {"id", "type", "subject", "event_id", "verified"}.

Usage: receiver.py PORT SECRET OUT_FILE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

port, secret, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
webhook = Webhook(secret)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = webhook.verify(body, headers)
            verified = True
        except Exception as err:  # any failure to verify is recorded
            payload = json.loads(body or b"{}")
            verified = False
            sys.stderr.write(f"verification failed: {err}\n")
        data = payload.get("data", {})
        with open(out, "a") as f:
            f.write(json.dumps({
                "id": headers.get("webhook-id"),
                "type": payload.get("type"),
                "subject": data.get("subject"),
                "event_id": data.get("event_id"),
                "verified": verified,
            }) + "\n")
        self.send_response(204 if verified else 400)
        self.end_headers()

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()

"""A webhook receiver for Liaison with nothing but Python's standard library.

    WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py [PORT]

It checks each request's Standard Webhooks signature (HMAC-SHA256 of
`{webhook-id}.{webhook-timestamp}.{body}` under the endpoint's secret, compared in
constant time), refuses stale timestamps, answers 204 and prints one line per event:
`ok <sequence> <type> <resource>`. A request that fails the check gets 400 (the hub
does not retry a 4xx) and a line `refused <reason>`.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

# Requests older or newer than this are refused, so a captured one cannot be replayed.
TOLERANCE_SECS = 300
SECRET = base64.b64decode(os.environ["WEBHOOK_SECRET"].removeprefix("whsec_"))


def verify(headers, body):
    """The event, or a ValueError saying why the request is not the hub's."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "").split()
    if not (msg_id and timestamp.isdigit() and signatures):
        raise ValueError("missing webhook headers")
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECS:
        raise ValueError("stale timestamp")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET, signed, hashlib.sha256).digest()).decode()
    # During a secret rotation the hub signs with both secrets: any one may match.
    if not any(
        hmac.compare_digest(expected, s.removeprefix("v1,"))
        for s in signatures
        if s.startswith("v1,")
    ):
        raise ValueError("no matching signature")
    return json.loads(body)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            event = verify(self.headers, body)
        except ValueError as refused:
            print("refused", refused, flush=True)
            self.send_response(400)
            self.end_headers()
            return
        # Deliveries arrive at least once: a real receiver deduplicates by webhook-id.
        print("ok", event.get("sequence"), event.get("type"), event.get("resource"), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()

"""An example business backend on imserver's HTTP API, with the standard library's http.server.

    IMSERVER_API_URL=http://127.0.0.1:7001 IMSERVER_API_KEY=... \
    IMSERVER_WEBHOOK_SECRET=whsec_... LISTEN=127.0.0.1:8000 python examples/backend.py

GET /connect?user=alice   a connect URL for alice's browser
POST /send {"from", "to", "text"}     a private message
POST /room {"room", "user", "text"}   joins user to room, then says text there
POST /webhook                         the node's presence webhook, verified and recorded
GET /presence                         the presence events recorded so far

It trusts the `user` it is given: a real backend takes it from its own login session.
"""

import json
import logging
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from imserver_client import ApiError, Client, WebhookVerificationError, verify_webhook

api = Client(os.environ["IMSERVER_API_URL"], os.environ.get("IMSERVER_API_KEY"))
webhook_secrets = os.environ.get("IMSERVER_WEBHOOK_SECRET", "").split(",")
presence = {}  # event id -> event: delivery is at least once, so keyed by id


class Backend(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/connect":
            user = parse_qs(url.query).get("user", [""])[0]
            self.call(lambda: {"url": api.connect_url(user, meta={"user": user})["url"]})
        elif url.path == "/presence":
            self.answer(200, sorted(presence.values(), key=lambda e: e["id"]))
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/webhook":
            try:
                payload = verify_webhook(webhook_secrets, self.headers, body)
            except WebhookVerificationError as refused:
                logging.warning("webhook refused: %s", refused)
                return self.answer(400, {"error": str(refused)})
            presence.update((e["id"], e) for e in payload["events"])
            return self.answer(200, {})
        params = json.loads(body or b"{}")
        if self.path == "/send":
            self.call(lambda: api.send(params["from"], [params["to"]], {"text": params["text"]}))
        elif self.path == "/room":
            def say():
                api.join(params["room"], params["user"])
                return api.send_chan(params["user"], params["room"], {"text": params["text"]})
            self.call(say)
        else:
            self.answer(404, {"error": "not_found"})

    def call(self, work):
        try:
            self.answer(200, work())
        except ApiError as e:
            self.answer(e.status or 502, {"error": e.code, "message": e.message, "field": e.field})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass  # quiet; a real backend logs through its own logging


if __name__ == "__main__":
    host, _, port = os.environ.get("LISTEN", "127.0.0.1:8000").rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Backend)
    print(json.dumps({"event": "ready", "listen": "%s:%d" % server.server_address}), flush=True)
    server.serve_forever()

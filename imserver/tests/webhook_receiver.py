#!/usr/bin/env python3
"""A webhook receiver for imserver's tests: verifies every request with the Standard Webhooks
reference library (the PyPI `standardwebhooks` package), never with imserver's own code, and
appends one JSON line per verified event to --out (or one `error` line per request that does
not verify, answered 401). Prints {"port": N} on stdout once listening.

Faults on demand: --die-after N exits on the Nth request after recording it but before
answering (the sender must post it again); --status answers that status instead of 204;
--redirect-to answers 307 towards that URL; --delay-ms waits that long before answering.
"""

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from standardwebhooks import Webhook, WebhookVerificationError
except ImportError:
    sys.stderr.write(
        "the standardwebhooks Python package is missing: run `pip install standardwebhooks` "
        "(scripts/test.sh does, with ensure_python_package standardwebhooks)\n"
    )
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--status", type=int, default=204)
    parser.add_argument("--redirect-to", default="")
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    hook = Webhook(args.secret)
    requests = [0]

    def record(lines):
        with open(args.out, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line) + "\n")
            out.flush()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            requests[0] += 1
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if args.redirect_to:
                record([{"redirected": self.headers.get("webhook-id")}])
                self.send_response(307)
                self.send_header("location", args.redirect_to)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            try:
                payload = hook.verify(body, dict(self.headers.items()))
            except WebhookVerificationError as e:
                record([{"error": str(e)}])
                self.send_response(401)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            webhook_id = self.headers.get("webhook-id")
            record(
                [dict(event, webhook_id=webhook_id, type=payload.get("type")) for event in payload["events"]]
            )
            if args.die_after and requests[0] >= args.die_after:
                os._exit(3)
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            self.send_response(args.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

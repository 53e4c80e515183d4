"""A tiny HTTP server for executor pods in tests: `python -m localfleet.testserver PORT`.

GET /          the pod's name (env POD_NAME), also in the X-Served-By header
GET /ready     200, or 503 after POST /unready (readiness probes)
GET /metrics   localfleet_requests_total in Prometheus text format
"""
from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("POD_NAME", "unknown")
STATE = {"ready": True, "requests": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def _send(self, code: int, body: str, content_type: str = "text/plain") -> None:
        payload = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Served-By", NAME)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/ready":
            self._send(200 if STATE["ready"] else 503, "ready\n" if STATE["ready"] else "not ready\n")
        elif self.path == "/metrics":
            self._send(200, f'# TYPE localfleet_requests_total counter\nlocalfleet_requests_total{{server="{NAME}"}} '
                            f'{STATE["requests"]}\n', "text/plain; version=0.0.4")
        else:
            with LOCK:
                STATE["requests"] += 1
            self._send(200, f"{NAME}\n")

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/unready":
            STATE["ready"] = False
            self._send(200, "now unready\n")
        else:
            self._send(404, "unknown\n")

    def log_message(self, *_args) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()  # noqa: S104 (pod's own netns)

"""The serving pod's HTTP front: it takes each request as it arrives, stamps the arrival, and hands it to Triton.

Triton's Python backend sees a request only when `execute` is called, after Triton's queue; it has no arrival time.
So `serve` puts Triton's HTTP endpoint on 127.0.0.1 and this front on the pod's HTTP port: every request gets the
header `qfleet-arrival-ns` (wall clock, nanoseconds, taken when its headers have been read), which Triton forwards
as a request parameter (`--http-header-forward-pattern`), and the model times the request from there
(`triton_model.request_start`). What a user waits for beyond the pod (the network, the gateway) is in the gateway's
own histogram (docs/metrics.md, "Latency"). Requests over gRPC reach Triton directly and are timed from the start of
the `execute` call that holds them.

While the pod drains (`Front.drain()`, on SIGTERM), /v2/health/ready answers 503 and every other request is still
served: the gateway stops sending new ones once it sees the endpoint go, and the ones it sent before that succeed.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARRIVAL_HEADER = "qfleet-arrival-ns"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length"}


READY_PATH = "/v2/health/ready"


def handler_for(upstream_port: int, timeout: float = 600.0,
                draining: threading.Event | None = None) -> type[BaseHTTPRequestHandler]:
    draining = draining or threading.Event()

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return

        def _forward(self) -> None:
            arrival = time.time_ns()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if draining.is_set() and self.path.split("?")[0] == READY_PATH:
                self.send_response(503, "Draining")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers[ARRIVAL_HEADER] = str(arrival)
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=timeout)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
            except OSError as error:
                self.send_error(502, f"Triton did not answer: {error}")
                return
            finally:
                upstream.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    return Forward


class Front:
    """The front on (address, port) forwarding to Triton's HTTP on 127.0.0.1:upstream_port, in a daemon thread."""

    def __init__(self, address: str, port: int, upstream_port: int) -> None:
        self.draining = threading.Event()
        self.server = ThreadingHTTPServer((address, port), handler_for(upstream_port, draining=self.draining))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="qfleet-front", daemon=True)

    def start(self) -> Front:
        self.thread.start()
        return self

    def drain(self) -> None:
        """Not ready from now on; requests are still served."""
        self.draining.set()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

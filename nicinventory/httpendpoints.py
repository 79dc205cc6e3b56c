"""The daemons' HTTP side: GET /metrics (Prometheus text), /readyz (200 once `ready()` says so,
else 503) and /healthz (200 while the process serves), on a thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class MetricsServer:
    """`registry`: the Prometheus registry to expose (default: the process-wide one).
    OSError when the address cannot be bound; the caller says which setting it came from."""

    def __init__(
        self,
        address: str,
        port: int,
        ready: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
        name: str = "metrics",
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path in ("/readyz", "/healthz"):
                    ok = self.path == "/healthz" or ready()
                    body, ctype = (b"ok\n" if ok else b"not ready\n"), "text/plain"
                    code = 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scraped every few seconds: quiet
                pass

        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name=name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

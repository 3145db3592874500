"""A real webhook receiver that answers one byte per second, for the webhook timeout tests
of the alert sinks and of ``rehearse``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Trickler:
    """Answers one byte per second: the status line and headers (``/head``) or, after a
    prompt ``200`` and its headers, a 1000-byte body (``/body``). ``posts`` counts the
    requests it received."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.posts = 0
        trickler = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                trickler.posts += 1
                if self.path.endswith("/body"):
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    data = b"x" * 1000
                else:
                    data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                for byte in data:
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up
                    if trickler.stop.wait(1.0):
                        return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=2)

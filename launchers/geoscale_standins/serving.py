"""The HTTP plumbing of the stand-ins: a threaded server on 127.0.0.1 at a free port, and a request
handler base with request parsing, JSON and byte answers, and one error path for stand-in bugs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

POLL_INTERVAL_S = 0.05
"""How often the serving thread checks for a stop: the most a ``stop`` waits for it."""


class StandInHandler(BaseHTTPRequestHandler):
    """A handler of one stand-in (its class attribute ``standin``): every method of ``methods`` goes to
    :meth:`answer`, others get 501. A client that hangs up mid-answer ends the connection; any other
    exception (a stand-in bug) reaches the client as a 500 with :meth:`internal_error` as its body,
    not as a hung request. A HEAD request's answers carry headers only."""

    standin: Any
    methods: tuple[str, ...] = ()
    keep_blank_query_values = False
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:
        """Quiet: tests read the stand-in's own request records instead."""

    def _dispatch(self) -> None:
        if self.command not in self.methods:
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        try:
            self.answer(self.command)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - a stand-in bug must reach the client as a 500
            self.send_json(500, self.internal_error(error))

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def answer(self, method: str) -> None:
        """Answer the request: routing and the stand-in's own errors."""
        raise NotImplementedError

    def internal_error(self, error: Exception) -> dict:
        """The JSON body of the 500 that answers a stand-in bug."""
        raise NotImplementedError

    def request_target(self) -> tuple[str, dict[str, str]]:
        """The request's path and its query parameters (the last value of each)."""
        target = urlsplit(self.path)
        parsed = parse_qs(target.query, keep_blank_values=self.keep_blank_query_values)
        return target.path, {key: values[-1] for key, values in parsed.items()}

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, code: int, obj: Any, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> None:
        self.send_body(code, json.dumps(obj).encode(), content_type, headers)

    def send_body(self, code: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        """A whole answer: status, Content-Type and Content-Length, extra ``headers``, then ``data``."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.write_body(data)

    def write_body(self, data: bytes) -> None:
        self.wfile.write(data)


class ServedStandIn:
    """A stand-in served over HTTP by ``handler`` (a :class:`StandInHandler` subclass) in a daemon thread
    named ``thread_name``; a context manager. ``url`` is set by ``start`` and kept after ``stop``,
    when it refuses connections."""

    handler: type[StandInHandler]
    thread_name: str
    url = ""
    _httpd: ThreadingHTTPServer | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def serving(self) -> bool:
        return self._httpd is not None

    def start(self) -> None:
        bound = type(self.handler.__name__, (self.handler,), {"standin": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), bound)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self._httpd.serve_forever, args=(POLL_INTERVAL_S,), name=self.thread_name,
                         daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

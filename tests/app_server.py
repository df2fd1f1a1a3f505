"""Serve a Flask app over real HTTP on loopback, in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from flask import Flask
from werkzeug.serving import make_server


@contextlib.contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Run ``app`` on a threaded werkzeug server (a thread per request); yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()

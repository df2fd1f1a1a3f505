"""Serve a Flask app over real HTTP on loopback: werkzeug in a thread of the test
process (:func:`serve`), or the example host app under gunicorn (:func:`serve_with_gunicorn`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from flask import Flask
from servers import WorkerProcs, free_port
from werkzeug.serving import make_server

APP_FACTORY = "examples.host_app:create_app()"


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


def serve_with_gunicorn(
    procs: WorkerProcs, env: dict[str, str], worker_class: str, *options: str
) -> str:
    """Run the example host app under gunicorn (one process of ``worker_class``); its base URL.

    ``env`` configures the app as for a worker (conftest ``worker_env``); ``procs``
    stops gunicorn at the end of the test.
    """
    port = free_port()
    command = ["gunicorn", "--worker-class", worker_class, "--workers", "1", *options]
    server = procs.spawn([*command, "--bind", f"127.0.0.1:{port}", APP_FACTORY], env)
    procs.wait_for_log(server, "Booting worker", timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise AssertionError(f"gunicorn is not listening:\n{procs.log_tail(server)}")

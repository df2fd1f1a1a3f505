"""localstripe, a stateful fake Stripe API, served on 127.0.0.1 for the test suite.

``localstripe``'s own command binds every interface and keeps its data in
``/tmp/localstripe.pickle``; here its aiohttp application runs in a thread on a
free loopback port, and the store stays in memory so parallel runs cannot see
each other's customers. Session fixture ``localstripe_url`` -> ``http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator

import localstripe.resources
import pytest
from aiohttp import web
from servers import free_port

with warnings.catch_warnings():
    # localstripe registers plain-function handlers, which aiohttp deprecates.
    warnings.simplefilter("ignore", DeprecationWarning)
    from localstripe.server import app as localstripe_app


class LocalStripe:
    """localstripe's aiohttp app on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(localstripe_app)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        # In memory only: the default pickle file in /tmp is shared by every process.
        localstripe.resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self.url

    async def _serve(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """Base URL of a localstripe server running for the whole session."""
    server = LocalStripe()
    url = server.start()
    yield url
    server.stop()

"""A server-sent events client for the tests: reads a stream over real HTTP, line by line.

It parses the wire format itself (``http.client``, no SSE library) so that the
tests see exactly what the server sent: ids, data, comment lines, and the end
of the stream. Like an ``EventSource`` with only ``onmessage``, it returns unnamed
events; named ones (``module``) too when asked for in ``names``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit


@dataclasses.dataclass
class Event:
    id: int | str
    """A state's id is a number; a module's ``"<number>.<module>"``, kept as text."""
    data: dict[str, Any]
    received_at: float
    """``time.time()`` when the event's last line arrived."""
    name: str = "message"


class EventStream:
    """``GET url`` as an event stream; :meth:`next_event` returns events until the end."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout: float = 30.0,
        names: tuple[str, ...] = ("message",),
    ) -> None:
        self.names = names
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.connection.request(
            "GET", parts.path, headers={"Accept": "text/event-stream", **headers}
        )
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.comments: list[str] = []
        self.events: list[Event] = []

    @property
    def content_type(self) -> str:
        return self.response.getheader("Content-Type", "")

    def json(self) -> Any:
        """The body of an answer that is not a stream (an error)."""
        return json.loads(self.response.read())

    def next_event(self) -> Event | None:
        """The next event, or ``None`` once the server has closed the stream."""
        event_id: int | str | None = None
        name = "message"
        data: list[str] = []
        while True:
            line = self.response.readline()
            if not line:
                assert not data, f"the stream ended in the middle of an event: {data}"
                return None
            text = line.decode().rstrip("\r\n")
            if text.startswith(":"):
                self.comments.append(text[1:].strip())
            elif text.startswith("id:"):
                value = text[3:].strip()
                event_id = value if "." in value else int(value)
            elif text.startswith("event:"):
                name = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].strip())
            elif not text and data:
                assert event_id is not None, "an event without an id"
                event = Event(event_id, json.loads("\n".join(data)), time.time(), name)
                if name not in self.names:
                    event_id, name, data = None, "message", []
                    continue
                self.events.append(event)
                return event

    def rest(self) -> list[Event]:
        """Every event until the server closes the stream."""
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self.response.close()  # it owns the socket once the server said "Connection: close"
        self.connection.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

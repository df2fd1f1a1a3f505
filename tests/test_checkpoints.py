"""The per-attempt interruption control (checkpoints.py), run in a thread as a thread-pool
worker runs jobs: a cancel through real Redis, and each time limit, cut a read that hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from flask_plan_regen.checkpoints import (
    POLL_INTERVAL,
    Checkpoints,
    GenerationCanceled,
    TimeLimitExceeded,
    cancel_key,
    request_cancel,
)
from flask_plan_regen.config import DEFAULTS


class _State:
    """What the checkpoints use of the extension's state: a Redis client and its keys."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def key(self, *parts: str) -> str:
        return ":".join(("test_checkpoints", *parts))


def wait_until_interrupted(checkpoints: Checkpoints) -> None:
    deadline = time.monotonic() + 10
    while checkpoints.interruption is None and time.monotonic() < deadline:
        time.sleep(0.02)


def feed(peer: socket.socket, pieces: list[bytes], checkpoints: Checkpoints) -> None:
    """Send ``pieces`` 50 ms apart, until the reader is interrupted."""
    for piece in pieces:
        if checkpoints.interruption is not None:
            return
        try:
            peer.sendall(piece)
        except OSError:  # the reader cut the connection
            return
        time.sleep(0.05)


def read_in_a_thread(checkpoints: Checkpoints, send: Callable[[socket.socket], None]) -> Any:
    """Read chunks from a real socket in a worker thread, checking between chunks, until the
    peer closes; return (what ended it, seconds it took)."""
    ours, theirs = socket.socketpair()
    outcome: dict[str, Any] = {}

    def read() -> None:
        started = time.monotonic()
        try:
            with checkpoints.watching(close=lambda: ours.shutdown(socket.SHUT_RDWR)):
                while chunk := ours.recv(64):
                    checkpoints.chunk(tokens=len(chunk))
                    if b"}" in chunk:
                        checkpoints.module_arrived()
            outcome["ended"] = "complete"
        except Exception as error:  # what the job would see
            outcome["ended"] = error
        outcome["seconds"] = time.monotonic() - started

    reader = threading.Thread(target=read)
    reader.start()
    try:
        send(theirs)
    finally:
        theirs.close()  # the end of the answer
        reader.join(30)
        ours.close()
    assert not reader.is_alive()
    return outcome["ended"], outcome["seconds"]


def test_a_cancel_stops_a_read_that_hangs_within_a_second(redis_conn: redis.Redis) -> None:
    state = _State(redis_conn)
    checkpoints = Checkpoints.for_attempt(state, "gen-1", DEFAULTS)
    canceled_at: list[float] = []

    def send(peer: socket.socket) -> None:
        peer.sendall(b"x" * 10)
        time.sleep(0.3)  # the reader is now blocked in recv: only the watcher can end it
        canceled_at.append(time.monotonic())
        request_cancel(state, "gen-1", DEFAULTS)
        # The peer keeps the connection open: the read ends because it was cut.
        wait_until_interrupted(checkpoints)

    ended, _ = read_in_a_thread(checkpoints, send)
    assert isinstance(ended, GenerationCanceled)
    waited = time.monotonic() - canceled_at[0]
    print(f"cancel noticed after {waited:.2f} s (poll every {POLL_INTERVAL} s)")
    assert waited < 1.5
    assert checkpoints.spent.chunks == 10  # what was received is on record
    assert redis_conn.ttl(cancel_key(state, "gen-1")) > 0  # expires by itself


@pytest.mark.parametrize(
    ("limits", "script", "limit"),
    [
        ({"first_token": 0.6}, [], "time to first token"),
        ({"first_token": 5, "idle": 0.6}, [b"a", b"b"], "idle"),
        ({"first_token": 5, "idle": 5, "overall": 1.0}, [b"a"] * 40, "overall"),
    ],
)
def test_each_time_limit_ends_the_call_and_names_itself(
    limits: dict[str, float], script: list[bytes], limit: str
) -> None:
    checkpoints = Checkpoints(**limits)

    def send(peer: socket.socket) -> None:
        feed(peer, script, checkpoints)  # then silence, the connection left open
        wait_until_interrupted(checkpoints)

    ended, seconds = read_in_a_thread(checkpoints, send)
    print(f"{limit}: ended after {seconds:.2f} s with {ended!r}")
    assert isinstance(ended, TimeLimitExceeded)
    assert (ended.limit, ended.failure_class) == (limit, "timeout")
    assert limit in ended.public_message


def test_the_first_module_extends_the_overall_limit_once() -> None:
    checkpoints = Checkpoints(overall=0.5, extension=2.0)

    def send(peer: socket.socket) -> None:
        feed(peer, [b"{", b"}", b"}"] + [b"a"] * 20, checkpoints)  # 2 modules, 1 s of chunks

    ended, seconds = read_in_a_thread(checkpoints, send)
    print(f"ended after {seconds:.2f} s: {ended!r}")
    assert ended == "complete" and seconds > 0.5  # past 0.5 s, within 0.5 + 2.0 s

    checkpoints = Checkpoints(overall=0.8, extension=1.0)

    def longer(peer: socket.socket) -> None:
        feed(peer, [b"}"] * 3 + [b"a"] * 60, checkpoints)  # 3 s: past the one extension

    ended, seconds = read_in_a_thread(checkpoints, longer)
    print(f"ended after {seconds:.2f} s: {ended!r}")
    assert isinstance(ended, TimeLimitExceeded) and ended.limit == "overall"
    assert 1.7 <= seconds < 2.8


def test_sleep_wakes_for_a_cancel(redis_conn: redis.Redis) -> None:
    state = _State(redis_conn)
    checkpoints = Checkpoints.for_attempt(state, "gen-2", DEFAULTS)
    timer = threading.Timer(0.3, request_cancel, (state, "gen-2", DEFAULTS))
    timer.start()
    started = time.monotonic()
    with pytest.raises(GenerationCanceled):
        checkpoints.sleep(30)
    print(f"a 30 s sleep canceled after {time.monotonic() - started:.2f} s")
    assert time.monotonic() - started < 1.5
    timer.join()


def test_the_default_control_never_interrupts() -> None:
    checkpoints = Checkpoints()
    checkpoints.sleep(0.01)
    checkpoints.chunk()
    checkpoints.module_arrived()
    checkpoints.check()
    assert checkpoints.spent.chunks == 1

"""Cooperative interruption of one attempt's provider call: cancel, and its time limits.

The job gives every attempt a :class:`Checkpoints` (``request.checkpoints``).
A provider that streams uses it like this::

    checkpoints = request.checkpoints
    with checkpoints.watching(close=stream.close):   # cuts a read that hangs
        for chunk in stream:
            checkpoints.chunk(tokens=1)              # raises once interrupted
            ...
            if a_module_completed:
                request.module_ready(index, module)  # calls checkpoints.module_arrived()
    checkpoints.record_usage(model, prompt_tokens, completion_tokens)  # when the server says

``module_arrived`` extends the overall limit, once; a provider that has no
modules to show may call it itself. A provider that waits (the built-in one)
calls ``checkpoints.sleep(seconds)``; one without a stream, ``check()`` now and
then. Setting ``interruptible = True`` on the provider class tells a cancel to
leave its running job to stop itself (lifecycle.cancel).
The checks raise :class:`GenerationCanceled` (the job records the attempt as
``canceled``) or :class:`TimeLimitExceeded` (a ``timeout`` failure whose message
names the limit): time to the first chunk, silence between chunks, and the
overall limit. ``watching`` runs one small thread that notices a cancel or a
passed limit while the provider is blocked in a read, and calls ``close`` so the
read ends; the provider then sees the typed error. Nothing here uses signals,
so it works the same in a forked work horse and in a worker thread.

A cancel is learnt from a Redis key (:func:`request_cancel`) read at most every
``POLL_INTERVAL`` seconds by that thread: one ``EXISTS`` per half second per
running attempt, on the pooled connection, with no subscription to hold open
and no race with a cancel sent before the attempt started. The counts the
provider reported (:attr:`Checkpoints.spent`) let the job record the tokens of
an interrupted call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import RedisError

from .config import job_timeout
from .errors import ProviderTimeout

logger = logging.getLogger("flask_plan_regen.checkpoints")

POLL_INTERVAL = 0.5
"""Seconds between two reads of the cancel key while a call runs."""


class RegenState(Protocol):
    """What is used of state.RegenState (not imported: the state imports the providers,
    whose requests carry a :class:`Checkpoints`)."""

    @property
    def redis(self) -> Redis: ...

    def key(self, *parts: str) -> str: ...


class GenerationCanceled(Exception):
    """The regeneration was canceled while its provider call ran."""


class TimeLimitExceeded(ProviderTimeout):
    """A provider call passed one of its time limits (``limit`` names which)."""

    def __init__(self, limit: str, setting: str, seconds: float) -> None:
        super().__init__(
            f"{limit} limit passed ({setting} = {seconds:g} s)",
            public_message=f"The generation provider did not answer in time ({limit} limit, "
            f"{seconds:g} s).",
        )
        self.limit = limit


FIRST_TOKEN = ("time to first token", "PLAN_REGEN_PROVIDER_FIRST_TOKEN_TIMEOUT")
IDLE = ("idle", "PLAN_REGEN_PROVIDER_IDLE_TIMEOUT")
OVERALL = ("overall", "PLAN_REGEN_PROVIDER_TIMEOUT")


@dataclasses.dataclass
class Spent:
    """What an attempt's call has cost so far, as far as the provider reported it."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunks: int = 0
    """Chunks received: OpenAI-style servers send one output token per chunk, so this
    stands for ``completion_tokens`` when the stream was cut before its usage chunk."""


class Checkpoints:
    """The cancel and time-limit control of one attempt (see the module doc)."""

    def __init__(
        self,
        *,
        first_token: float | None = None,
        idle: float | None = None,
        overall: float | None = None,
        extension: float = 0.0,
        canceled: Callable[[], bool] | None = None,
    ) -> None:
        self._limits = {FIRST_TOKEN: first_token, IDLE: idle, OVERALL: overall}
        self._extension = extension
        self._canceled = canceled
        self._lock = threading.Lock()
        self._started = self._last_chunk = time.monotonic()
        self._first_chunk_seen = self._extended = False
        self._tripped: BaseException | None = None
        self._polled_at = 0.0
        self._wake = threading.Event()
        self._watcher: threading.Thread | None = None
        self.spent = Spent()

    @classmethod
    def for_attempt(
        cls, state: RegenState, generation_id: str, config: Mapping[str, Any]
    ) -> Checkpoints:
        """The control of an attempt of ``generation_id``, with the configured limits."""
        key = cancel_key(state, generation_id)

        def canceled() -> bool:
            try:
                return bool(state.redis.exists(key))
            except RedisError as error:  # the row's conditional commit still refuses the result
                logger.warning("cancel of %s not checked, Redis unavailable: %s", key, error)
                return False

        return cls(
            first_token=float(config["PLAN_REGEN_PROVIDER_FIRST_TOKEN_TIMEOUT"]),
            idle=float(config["PLAN_REGEN_PROVIDER_IDLE_TIMEOUT"]),
            overall=float(config["PLAN_REGEN_PROVIDER_TIMEOUT"]),
            extension=float(config["PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION"]),
            canceled=canceled,
        )

    def chunk(self, tokens: int = 1) -> None:
        """Note a chunk received (``tokens`` output tokens in it); raise if interrupted."""
        with self._lock:
            self._last_chunk = time.monotonic()
            self._first_chunk_seen = True
            self.spent.chunks += tokens
        self.check()

    def module_arrived(self) -> None:
        """Note a complete module: the first one extends the overall limit, once."""
        with self._lock:
            if not self._extended and self._limits[OVERALL] is not None:
                self._limits[OVERALL] = (self._limits[OVERALL] or 0.0) + self._extension
            self._extended = True
        self.check()

    def record_usage(
        self, model: str | None, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        """Keep the model and token counts the server reported (for an interrupted attempt)."""
        self.spent.model = model or self.spent.model
        if prompt_tokens is not None:
            self.spent.prompt_tokens = prompt_tokens
        if completion_tokens is not None:
            self.spent.completion_tokens = completion_tokens

    @property
    def interruption(self) -> BaseException | None:
        """The cancel or passed limit that interrupted the call, once one has."""
        return self._tripped

    def check(self) -> None:
        """Raise :class:`GenerationCanceled` or :class:`TimeLimitExceeded` once interrupted."""
        error = self._tripped or self._interruption(poll=self._watcher is None)
        if error is not None:
            self._tripped = error
            raise error

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, checking at least every ``POLL_INTERVAL``; raise if interrupted."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            self._wake.wait(min(left, POLL_INTERVAL))
            self.check()
        self.check()

    @contextlib.contextmanager
    def watching(self, close: Callable[[], None]) -> Iterator[None]:
        """Run the block while a thread watches for a cancel or a passed limit.

        On either, the thread calls ``close()`` (which must make the blocked read
        return or raise), and the block's exception, whatever it is, becomes the
        interruption.
        """
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(stop, close), name="plan-regen-checkpoints", daemon=True
        )
        self._watcher = watcher
        watcher.start()
        try:
            yield
        except Exception:
            if self._tripped is not None:
                raise self._tripped from None
            raise
        finally:
            stop.set()
            watcher.join()
            self._watcher = None
        if self._tripped is not None:  # the read ended quietly when the watcher closed it
            raise self._tripped

    def _watch(self, stop: threading.Event, close: Callable[[], None]) -> None:
        while not stop.wait(self._until_next_check()):
            error = self._interruption(poll=True)
            if error is not None:
                self._tripped = error
                self._wake.set()
                with contextlib.suppress(Exception):  # already closed, or closing anyway
                    close()
                return

    def _until_next_check(self) -> float:
        """Seconds to the next cancel poll or limit, whichever comes first."""
        with self._lock:
            first_token, idle, overall = (self._limits[k] for k in (FIRST_TOKEN, IDLE, OVERALL))
            moments = [self._polled_at + POLL_INTERVAL]
            if overall is not None:
                moments.append(self._started + overall)
            if not self._first_chunk_seen and first_token is not None:
                moments.append(self._started + first_token)
            elif self._first_chunk_seen and idle is not None:
                moments.append(self._last_chunk + idle)
        # Just past the moment, so that the limit is passed when checked.
        return max(min(moments) - time.monotonic() + 0.01, 0.01)

    def _interruption(self, *, poll: bool) -> BaseException | None:
        """The interruption due now, if any; the cancel key is read at most every
        ``POLL_INTERVAL`` seconds, and only when ``poll``."""
        now = time.monotonic()
        if poll and self._canceled is not None and now - self._polled_at >= POLL_INTERVAL:
            self._polled_at = now
            if self._canceled():
                return GenerationCanceled("canceled during the provider call")
        with self._lock:
            first_token, idle, overall = (self._limits[k] for k in (FIRST_TOKEN, IDLE, OVERALL))
            if overall is not None and now - self._started > overall:
                return TimeLimitExceeded(*OVERALL, overall)
            if not self._first_chunk_seen:
                if first_token is not None and now - self._started > first_token:
                    return TimeLimitExceeded(*FIRST_TOKEN, first_token)
            elif idle is not None and now - self._last_chunk > idle:
                return TimeLimitExceeded(*IDLE, idle)
        return None


def cancel_key(state: RegenState, generation_id: str) -> str:
    return state.key("cancel", generation_id)


def request_cancel(state: RegenState, generation_id: str, config: Mapping[str, Any]) -> None:
    """Tell a running attempt of ``generation_id`` to stop (its row is already canceled).

    The key lives as long as an attempt may run. Best effort: without Redis the
    attempt runs on, and its result is refused by the canceled row.
    """
    try:
        state.redis.set(cancel_key(state, generation_id), 1, ex=job_timeout(config))
    except RedisError as error:
        logger.warning("cancel of %s not signalled to its attempt: %s", generation_id, error)

"""Capacity shared by every worker of every machine: a provider entry's requests and
tokens per window, its concurrent calls and its fleet cooldown, held in Redis.

One Lua script checks and takes everything a call needs at once (a request, its
estimated tokens, a concurrency lease), or nothing, and says when capacity is
due. The ``limits`` package's moving-window strategies take one limit at a
time (a request could be counted and then refused its tokens), have no
lease-based semaphore for concurrency, and do not say when the next slot
frees up, so the script is ours: sorted sets scored by Redis's own clock
(``TIME``), so machines with skewed clocks agree.

* requests: one member per call, scored by the moment its answer came back
  (:func:`finished`); until then by the lease's expiry, so it counts while in
  flight. The server received the request somewhere between the grant and the
  answer: counting it from the answer on, a new call is only granted once the
  server's own window (counted from arrivals) has let the old one go, however
  slow the worker was to send it or the answer to come back. The window slides.
* tokens: one member ``<lease>:<tokens>`` per call, scored the same way, the
  estimate (prompt + output cap) replaced by the reported usage at the end.
* concurrency: one member per call in flight, scored by its expiry, so a worker
  killed mid-call frees its slot once the job timeout has passed.

Priority: a job that found no capacity is *parked* (an RQ scheduled job) with
an appointment (:func:`park`) placed after every parked job of higher priority,
spaced by the rate capacity frees up at; while a parked job's appointment is
due, no job behind it (lower priority, or the same priority parked later or
not parked at all) takes capacity. Workers dequeue higher queues first, so a
ready high-priority job is also taken before a low one.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping
from typing import Any

from flask import current_app

from .redis_client import as_text, synchronous
from .state import RegenState

# A parked job whose appointment passed this long ago is not coming (canceled, lost).
STALE_AFTER_MS = 30_000
# How soon a job that found every concurrent slot taken looks again.
CONCURRENCY_POLL_MS = 1000

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, priority = ARGV[1], tonumber(ARGV[2])
local window, rpm, tpm, concurrent = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local tokens, lease, ttl, stale = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local poll = tonumber(ARGV[11])

local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - stale, 'LIMIT', 0, 100)
for _, gone in ipairs(old) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('HDEL', KEYS[2], gone)
end
local mine = redis.call('ZSCORE', KEYS[1], id)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], now - stale, now, 'WITHSCORES')
for i = 1, #due, 2 do
  if due[i] ~= id then
    local other = tonumber(redis.call('HGET', KEYS[2], due[i]) or '0')
    local ahead = other == priority and (not mine or tonumber(due[i + 1]) < tonumber(mine))
    if other > priority or ahead then
      return {0, poll, 'queue'}
    end
  end
end

local cooling = redis.call('PTTL', KEYS[3])
if cooling > 0 then return {0, cooling, 'cooldown'} end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local used = redis.call('ZCARD', KEYS[4])
if rpm > 0 and used >= rpm then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[4], used - rpm, used - rpm, 'WITHSCORES')[2])
  if oldest > now then return {0, poll, 'rpm'} end  -- granted, not sent yet
  return {0, oldest + window - now, 'rpm'}
end
if tpm > 0 then
  local calls = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
  local total = 0
  for i = 1, #calls, 2 do total = total + tonumber(string.match(calls[i], ':(%d+)$')) end
  local need = math.min(tokens, tpm)
  if total + need > tpm then
    local free_at = now
    local i = 1
    while total + need > tpm and i <= #calls do
      total = total - tonumber(string.match(calls[i], ':(%d+)$'))
      free_at = tonumber(calls[i + 1]) + window
      i = i + 2
    end
    if free_at - window > now then return {0, poll, 'tpm'} end  -- granted, not sent yet
    return {0, free_at - now, 'tpm'}
  end
end
if concurrent > 0 and redis.call('ZCARD', KEYS[6]) >= concurrent then
  return {0, poll, 'concurrency'}
end

-- Scored in the future until the answer comes back (finished): a call in flight, or
-- slow to leave, keeps its place in the window.
redis.call('ZADD', KEYS[4], now + ttl, lease)
redis.call('ZADD', KEYS[5], now + ttl, lease .. ':' .. tokens)
redis.call('ZADD', KEYS[6], now + ttl, lease)
redis.call('PEXPIRE', KEYS[4], ttl + window + 1000)
redis.call('PEXPIRE', KEYS[5], ttl + window + 1000)
redis.call('PEXPIRE', KEYS[6], ttl + 1000)
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
return {1, 0, 'ok'}
"""

# ARGV: lease, estimated tokens, reported tokens (-1: keep the estimate), mode.
# mode 'end': the answer came back now: free the concurrent slot, stamp the request
# and its tokens (corrected) now; 'cancel': no call was made, take everything back.
_UPDATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, estimate, reported, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local member = lease .. ':' .. estimate
redis.call('ZREM', KEYS[3], lease)
if mode == 'cancel' then
  redis.call('ZREM', KEYS[1], lease)
  redis.call('ZREM', KEYS[2], member)
  return 1
end
redis.call('ZADD', KEYS[1], 'XX', now, lease)
if redis.call('ZREM', KEYS[2], member) == 1 then
  redis.call('ZADD', KEYS[2], now, lease .. ':' .. (reported >= 0 and reported or estimate))
end
return 1
"""

# Place a parked job after every parked job ahead of it (higher priority, or the same
# priority parked before it), `spacing` after the last of them, and not before `wait`.
_PARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, priority = ARGV[1], tonumber(ARGV[2])
local wait, spacing, stale = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local mine = redis.call('ZSCORE', KEYS[1], id)
local last = nil
local parked = redis.call('ZRANGEBYSCORE', KEYS[1], now - stale, '+inf', 'WITHSCORES')
for i = 1, #parked, 2 do
  if parked[i] ~= id then
    local other = tonumber(redis.call('HGET', KEYS[2], parked[i]) or '0')
    local at = tonumber(parked[i + 1])
    if other > priority or (other == priority and (not mine or at < tonumber(mine))) then
      if not last or at > last then last = at end
    end
  end
end
local appointment = now + wait
if last and last + spacing > appointment then appointment = last + spacing end
redis.call('ZADD', KEYS[1], appointment, id)
redis.call('HSET', KEYS[2], id, priority)
local keep = appointment - now + stale + 60000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return appointment - now
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    """A provider entry's shared limits; ``None`` is no limit."""

    rpm: int | None = None
    """Requests per window (``PLAN_REGEN_PROVIDER_LIMIT_WINDOW``, a minute by default)."""
    tpm: int | None = None
    """Tokens per window: estimated before the call (prompt + output cap), then corrected."""
    concurrent: int | None = None
    """Calls in flight at once."""

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> Limits:
        value = value or {}
        return cls(rpm=value.get("rpm"), tpm=value.get("tpm"), concurrent=value.get("concurrent"))

    def spacing(self, tokens: int, window: float) -> float:
        """Seconds between two calls when the limits are the bottleneck (0 without limits)."""
        gaps = [window / self.rpm if self.rpm else 0.0]
        if self.tpm:
            gaps.append(window * min(tokens, self.tpm) / self.tpm)
        return max(gaps)


@dataclasses.dataclass(frozen=True)
class Lease:
    """Capacity taken on one entry for one call."""

    entry: str
    id: str
    tokens: int


@dataclasses.dataclass(frozen=True)
class NoCapacity:
    """Why an entry cannot take a call now, and in how many seconds it may."""

    entry: str
    reason: str
    """``rpm``, ``tpm``, ``concurrency``, ``cooldown``, ``queue`` (a parked job ahead)
    or, from the breaker, ``breaker``."""
    wait: float


def window_ms() -> int:
    return int(float(current_app.config["PLAN_REGEN_PROVIDER_LIMIT_WINDOW"]) * 1000)


def _keys(state: RegenState, entry: str) -> list[str]:
    return [
        state.key("capacity", "parked"),
        state.key("capacity", "parked-priority"),
        state.key("provider", entry, "cooldown"),
        state.key("provider", entry, "requests"),
        state.key("provider", entry, "tokens"),
        state.key("provider", entry, "calls"),
    ]


def acquire(
    state: RegenState,
    entry: str,
    limits: Limits,
    *,
    generation_id: str,
    priority: int,
    tokens: int,
    lease_seconds: int,
) -> Lease | NoCapacity:
    """Take a request, ``tokens`` and a concurrent slot on ``entry`` for one call, or nothing."""
    lease = secrets.token_hex(8)
    granted, wait_ms, reason = synchronous(state.redis).eval(
        _ACQUIRE,
        6,
        *_keys(state, entry),
        generation_id,
        priority,
        window_ms(),
        limits.rpm or 0,
        limits.tpm or 0,
        limits.concurrent or 0,
        tokens,
        lease,
        lease_seconds * 1000,
        STALE_AFTER_MS,
        CONCURRENCY_POLL_MS,
    )
    if granted:
        return Lease(entry, lease, tokens)
    return NoCapacity(entry, as_text(reason), max(int(wait_ms), 0) / 1000)


def finished(state: RegenState, lease: Lease, reported_tokens: int | None) -> None:
    """The call ended: free its concurrent slot; its request and tokens (those the server
    reported, else the estimate) count in the window from now."""
    _update(state, lease, -1 if reported_tokens is None else reported_tokens, "end")


def cancel(state: RegenState, lease: Lease) -> None:
    """No call was made after all: give back everything the lease took."""
    _update(state, lease, -1, "cancel")


def _update(state: RegenState, lease: Lease, reported: int, mode: str) -> None:
    keys = _keys(state, lease.entry)[3:]
    synchronous(state.redis).eval(_UPDATE, 3, *keys, lease.id, lease.tokens, reported, mode)


def cool_down(state: RegenState, entry: str, seconds: float) -> None:
    """Stop every worker's calls to ``entry`` for ``seconds`` (a longer cooldown is kept)."""
    key = state.key("provider", entry, "cooldown")
    milliseconds = max(math.ceil(seconds * 1000), 1)
    remaining = state.redis.pttl(key)
    if not isinstance(remaining, int) or remaining < milliseconds:
        state.redis.set(key, 1, px=milliseconds)


def park(
    state: RegenState, generation_id: str, priority: int, wait: float, spacing: float
) -> float:
    """Give a job that found no capacity its appointment; return the seconds until it."""
    keys = _keys(state, "")[:2]
    waited = synchronous(state.redis).eval(
        _PARK, 2, *keys, generation_id, priority, int(wait * 1000), int(spacing * 1000),
        STALE_AFTER_MS,
    )  # fmt: skip
    return max(int(waited), 0) / 1000


def usage(state: RegenState, entry: str) -> dict[str, Any]:
    """What ``entry`` uses now: requests and tokens in the window, calls in flight, cooldown."""
    _, _, cooldown, requests, tokens, calls = _keys(state, entry)
    seconds = synchronous(state.redis).time()
    now = seconds[0] * 1000 + seconds[1] // 1000
    since = now - window_ms()
    with state.redis.pipeline(transaction=False) as pipe:
        pipe.zcount(requests, since, "+inf")
        pipe.zrangebyscore(tokens, since, "+inf")
        pipe.zcount(calls, now, "+inf")
        pipe.pttl(cooldown)
        counted, members, in_flight, cooling = pipe.execute()
    return {
        "requestsInWindow": int(counted),
        "tokensInWindow": sum(int(as_text(m).rsplit(":", 1)[1]) for m in members),
        "callsInFlight": int(in_flight),
        "cooldownSeconds": round(cooling / 1000, 1) if cooling and cooling > 0 else 0,
    }

"""A circuit breaker per provider entry, shared by every worker through Redis.

``closed``: calls go through; ``PLAN_REGEN_BREAKER_THRESHOLD`` consecutive
``provider_error``/``timeout`` failures within ``PLAN_REGEN_BREAKER_WINDOW``
seconds open it. ``open``: no call for ``PLAN_REGEN_BREAKER_COOLDOWN`` seconds;
then the next job allowed to probe makes one call (``half_open``) while every
other job waits; its success closes the breaker, its failure opens it again.
A success anywhere resets the count. Each change is one atomic script, so one
process sees each transition and logs it (one line per change), counts it
(``plan_regen_breaker_transitions_total``) and ``flask plan-regen info`` shows
the state.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flask import current_app

from .metrics import count_breaker_transition
from .redis_client import as_text, synchronous
from .state import RegenState

logger = logging.getLogger("flask_plan_regen.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# How soon a job that waits on another job's probe looks again.
PROBE_POLL_MS = 1000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: state hash, probe key. ARGV: may probe (0/1), cooldown ms, probe ttl ms, poll ms.
# Returns {allowed (0/1), wait ms, transition ('' or the new state), this is the probe (0/1)}.
_CHECK = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return {1, 0, '', 0} end
local may_probe, cooldown, ttl, poll = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
if state == 'open' then
  local reopen = tonumber(redis.call('HGET', KEYS[1], 'opened')) + cooldown
  if now < reopen then return {0, reopen - now, '', 0} end
end
if may_probe and redis.call('SET', KEYS[2], 1, 'NX', 'PX', ttl) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {1, 0, state == 'open' and 'half_open' or '', 1}
end
return {0, poll, '', 0}
"""
)

# KEYS: state hash, probe key. ARGV: 'success' | 'failure' | 'abandon', threshold, window ms.
_RECORD = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local outcome = ARGV[1]
if outcome == 'abandon' then
  redis.call('DEL', KEYS[2])
  return ''
end
if outcome == 'success' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
  redis.call('DEL', KEYS[2])
  if state ~= 'closed' then return 'closed' end
  return ''
end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened', now, 'failures', 0)
  redis.call('DEL', KEYS[2])
  return 'open'
end
if state == 'open' then return '' end
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or '0')
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if failures == 0 or now - first > tonumber(ARGV[3]) then
  first, failures = now, 0
end
failures = failures + 1
redis.call('HSET', KEYS[1], 'first', first, 'failures', failures)
if failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened', now, 'failures', 0)
  return 'open'
end
return ''
"""
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    allowed: bool
    wait: float
    """Seconds until the breaker may let a call through (0 when allowed)."""
    probe: bool
    """This call is the half-open probe."""


def _keys(state: RegenState, entry: str) -> list[str]:
    return [state.key("provider", entry, "breaker"), state.key("provider", entry, "probe")]


def enabled() -> bool:
    return int(current_app.config["PLAN_REGEN_BREAKER_THRESHOLD"]) > 0


def check(state: RegenState, entry: str, *, may_probe: bool, probe_seconds: int) -> Verdict:
    """Whether a call to ``entry`` may go now; a job that ``may_probe`` may be the probe."""
    if not enabled():
        return Verdict(True, 0.0, False)
    cooldown = int(float(current_app.config["PLAN_REGEN_BREAKER_COOLDOWN"]) * 1000)
    allowed, wait_ms, transition, probe = synchronous(state.redis).eval(
        _CHECK, 2, *_keys(state, entry), int(may_probe), cooldown, probe_seconds * 1000,
        PROBE_POLL_MS,
    )  # fmt: skip
    changed = as_text(transition)
    if changed:
        _changed(entry, OPEN, changed, "cool-down over; one probe call")
    return Verdict(bool(allowed), int(wait_ms) / 1000, bool(probe))


def record(state: RegenState, entry: str, outcome: str) -> None:
    """Count a call's ``outcome``: ``success``, ``failure`` (provider_error/timeout), or
    ``abandon`` (the probe made no call after all)."""
    if not enabled():
        return
    config = current_app.config
    window = int(float(config["PLAN_REGEN_BREAKER_WINDOW"]) * 1000)
    threshold = int(config["PLAN_REGEN_BREAKER_THRESHOLD"])
    keys = _keys(state, entry)
    changed = as_text(synchronous(state.redis).eval(_RECORD, 2, *keys, outcome, threshold, window))
    if changed == OPEN:
        why = f"{threshold} consecutive provider errors or timeouts"
        _changed(entry, CLOSED if outcome == "failure" else HALF_OPEN, OPEN, why)
    elif changed == CLOSED:
        _changed(entry, HALF_OPEN, CLOSED, "a call succeeded")


def _changed(entry: str, before: str, after: str, why: str) -> None:
    log = logger.warning if after == OPEN else logger.info
    log("provider %s circuit breaker: %s -> %s (%s)", entry, before, after, why)
    count_breaker_transition(entry, after)


def describe(state: RegenState, entry: str) -> dict[str, Any]:
    """The breaker of ``entry`` for ``info``: its state, failures counted, seconds open left."""
    raw = synchronous(state.redis).hgetall(_keys(state, entry)[0])
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    breaker_state = fields.get("state", CLOSED)
    described: dict[str, Any] = {
        "state": breaker_state,
        "failures": int(fields.get("failures", 0)),
    }
    if breaker_state == OPEN:
        seconds, micros = synchronous(state.redis).time()
        now = seconds * 1000 + micros // 1000
        reopen = int(fields["opened"]) + int(
            float(current_app.config["PLAN_REGEN_BREAKER_COOLDOWN"]) * 1000
        )
        described["probeInSeconds"] = round(max(reopen - now, 0) / 1000, 1)
    return described

"""The rate and byte budgets: per-client request rate (a token bucket over a minute),
concurrency and the daily egress budget, kept by :class:`Limiter` with an injected clock.
Going over gives a 429 decision with a retry-after (a ``report`` one in report mode).

The budget counts every byte a request sends out: method, URL and headers
(:func:`egress_bytes`) as well as the body. Pure code: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from wonders.policy.rules import ClientPolicy, Decision, Policy

__all__ = ["Limiter", "egress_bytes", "header_bytes"]


def _unknown(client: str) -> Decision:
    return Decision("deny", "no client entry", f"client {client!r} is not in the policy", 403)



@dataclass
class _ClientState:
    tokens: float
    stamp: float
    in_flight: int = 0
    day: date | None = None
    day_bytes: int = 0


def header_bytes(headers: Iterable[tuple[str, str]]) -> int:
    """Bytes a request's headers take on the wire: ``name: value`` and CRLF each."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


def egress_bytes(method: str, url: str, headers: Iterable[tuple[str, str]],
                 body: int = 0) -> int:
    """What a request sends out, for the egress budget: its method, URL (UTF-8), headers
    (:func:`header_bytes`) and ``body`` bytes."""
    return len(method) + 1 + len(url.encode("utf-8", "surrogatepass")) + header_bytes(
        headers) + body


class Limiter:
    """Per-client rate (token bucket over a minute), concurrency and daily egress budget.

    ``clock`` returns Unix seconds (injected so tests drive time); days are UTC days.
    :meth:`admit` takes a concurrency slot that :meth:`release` gives back; :meth:`charge`
    adds request-body bytes as a streamed body arrives. Every byte that leaves counts
    against the budget: give :meth:`admit` the request's :func:`egress_bytes` (URL and
    headers, and the body when it is known up front).
    """

    def __init__(self, policy: Policy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._state: dict[str, _ClientState] = {}

    def update(self, policy: Policy) -> None:
        """Use a reloaded policy; counters carry over."""
        self._policy = policy

    def _entry(self, client: str) -> tuple[ClientPolicy, _ClientState] | None:
        entry = self._policy.clients.get(client)
        if entry is None:
            return None
        now = self._clock()
        state = self._state.get(client)
        if state is None:
            state = self._state[client] = _ClientState(float(entry.rate_per_minute or 0), now)
        if entry.rate_per_minute is not None:
            rate = entry.rate_per_minute / 60.0
            elapsed = max(0.0, now - state.stamp)
            state.tokens = min(float(entry.rate_per_minute), state.tokens + elapsed * rate)
        state.stamp = now
        today = datetime.fromtimestamp(now, UTC).date()
        if state.day != today:
            state.day, state.day_bytes = today, 0
        return entry, state

    def _over(self, entry: ClientPolicy, rule: str, reason: str, retry: float) -> Decision:
        if entry.mode == "report":
            return Decision("report", rule, f"would deny: {reason}", 200, retry)
        return Decision("deny", rule, reason, 429, retry)

    def _until_tomorrow(self) -> float:
        now = self._clock()
        tomorrow = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
        return datetime.combine(tomorrow, time(), UTC).timestamp() - now

    def admit(self, client: str, request_bytes: int = 0) -> Decision:
        """Take a slot for one request that sends ``request_bytes`` out: its URL and
        headers, and its body unless that is streamed (and :meth:`charge`d as it goes)."""
        found = self._entry(client)
        if found is None:
            return _unknown(client)
        entry, state = found
        who = f"client {client}"
        if entry.max_concurrent is not None and state.in_flight >= entry.max_concurrent:
            return self._over(entry, f"{who}: max_concurrent {entry.max_concurrent}",
                              f"{client} already has {state.in_flight} requests in flight", 1.0)
        if entry.rate_per_minute is not None and state.tokens < 1.0:
            wait = (1.0 - state.tokens) * 60.0 / entry.rate_per_minute
            return self._over(entry, f"{who}: rate_per_minute {entry.rate_per_minute}",
                              f"{client} is over {entry.rate_per_minute} requests a minute", wait)
        budget = entry.egress_bytes_per_day
        if budget is not None and state.day_bytes + request_bytes > budget:
            return self._over(entry, f"{who}: egress_bytes_per_day {budget}",
                              f"{client}'s egress budget of {budget} bytes a day is spent",
                              self._until_tomorrow())
        if entry.rate_per_minute is not None:
            state.tokens -= 1.0
        state.in_flight += 1
        state.day_bytes += request_bytes
        return Decision("allow", f"{who}: limits", "within rate, concurrency and budget")

    def charge(self, client: str, nbytes: int) -> Decision:
        """Count ``nbytes`` more of a streamed request body against the daily budget."""
        found = self._entry(client)
        if found is None:
            return _unknown(client)
        entry, state = found
        budget = entry.egress_bytes_per_day
        if budget is not None and state.day_bytes + nbytes > budget:
            return self._over(entry, f"client {client}: egress_bytes_per_day {budget}",
                              f"{client}'s egress budget of {budget} bytes a day is spent",
                              self._until_tomorrow())
        state.day_bytes += nbytes
        return Decision("allow", f"client {client}: limits", "within budget")

    def release(self, client: str) -> None:
        state = self._state.get(client)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def in_flight(self, client: str) -> int:
        state = self._state.get(client)
        return state.in_flight if state else 0

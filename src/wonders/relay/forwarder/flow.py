"""Flow control of one response: which segment may be stored, and when to stop waiting.

Pure: no I/O and no clock (times are passed in, from any monotonic clock, in seconds), so
the rules are tested with tables (``tests/relay/test_flow.py``).

The rules:

* **Window.** At most ``unread`` (W) segments of a response wait unread in the mailbox:
  segment n >= W is stored only once segment n - W is gone (the client deletes each
  segment it has read). Until then the writer polls for that segment and stores nothing,
  and the pump reads nothing from the upstream, so TCP backpressure holds the server back.
* **Read timeout.** A wait that began at ``t`` gives up at ``t + read_timeout``: the
  client read nothing for that long.
* **Total timeout.** No wait goes past ``deadline`` (the response's total timeout); one
  cut short by it gives up as ``total-timeout``.

Either way the response ends there, without an error trailer (there is no free slot to
store one): the client sees a truncated body, if it ever reads again.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FlowWindow", "GiveUp"]


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop waiting for room: the response ends here. ``code`` goes to the audit record."""

    code: str
    message: str


class FlowWindow:
    """The window of one response: ``unread`` segments at most, waits bounded by
    ``read_timeout`` and by ``deadline`` (set once the body starts; none before)."""

    def __init__(self, unread: int, read_timeout: float, total_timeout: float) -> None:
        self.unread, self.read_timeout, self.total_timeout = unread, read_timeout, total_timeout
        self.deadline = float("inf")
        self.gone = -1  # the highest segment index known read (and deleted) by the client

    def start(self, now: float) -> None:
        """The body starts at ``now``: the total timeout runs from here."""
        self.deadline = now + self.total_timeout

    def blocker(self, index: int) -> int | None:
        """The segment that must be gone before segment ``index`` is stored; None if
        ``index`` may be stored now."""
        oldest = index - self.unread
        return None if oldest <= self.gone else oldest

    def freed(self, index: int) -> None:
        """Segment ``index`` is gone (and so is every one before it)."""
        self.gone = max(self.gone, index)

    def until(self, now: float) -> float:
        """When a wait for room that begins at ``now`` gives up."""
        return min(now + self.read_timeout, self.deadline)

    def left(self, until: float, now: float) -> float | GiveUp:
        """Seconds a wait ending at ``until`` may still go on at ``now``, or why it ends."""
        if until - now > 0:
            return until - now
        if until >= self.deadline:
            return GiveUp("total-timeout", "the response took longer than total_timeout "
                          f"({self.total_timeout:.0f} s)")
        return GiveUp("client-stopped-reading",
                      f"the client read no segment for {self.read_timeout:.0f} s "
                      f"({self.unread} unread)")

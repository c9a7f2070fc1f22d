"""When a response body is cut into segments: the head, the flushes, the size cut.

Pure and sans-I/O: the forwarder feeds what the upstream sent, with the time it arrived,
and calls :meth:`Segmenter.tick` when :meth:`Segmenter.deadline` passes; each call returns
the actions to carry out in order (store the head, store a segment, …). No clock is read
here, so every rule is tested with tables of events and times.

The rules:

* **Bounded delay.** No byte waits longer than ``delay`` seconds after it arrived: the
  deadline runs from the *oldest* unflushed byte, not from the newest, so a steady stream
  (an LLM's tokens 10–50 ms apart) is sent every ``delay`` instead of when it goes quiet.
  Before the head is stored, the deadline runs from the head's arrival.
* **Inline.** A response that ends before its deadline, within ``inline_limit`` bytes, is
  stored whole in its head: one object, one round trip.
* **Full segments** of ``segment_size`` are cut as soon as they fill.
* **Size cut.** Past ``limit`` bytes the body ends with an error trailer (never delivered
  as complete); before the head is stored the whole response is refused instead.

:func:`flush_delay_for` picks the delay: event streams (``text/event-stream``, NDJSON,
bodies without a length) flush sooner than bulk bodies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "EVENT_STREAM_TYPES",
    "Action",
    "Finish",
    "Refuse",
    "Segment",
    "Segmenter",
    "Start",
    "Whole",
    "flush_delay_for",
    "is_event_stream",
]

#: Media types whose bodies are a sequence of events, each useful on its own.
EVENT_STREAM_TYPES = frozenset({
    "text/event-stream", "application/x-ndjson", "application/jsonl",
    "application/json-seq", "application/stream+json", "application/x-jsonlines",
})


@dataclass(frozen=True, slots=True)
class Start:
    """Store the response head; the body follows in segments."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Seal and store these bytes as the next segment."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Whole:
    """Store the head with this whole body inline (the response is complete)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Finish:
    """Store the trailer: the body is complete, or ends with ``error``."""

    error: str | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """Nothing was stored yet: answer with an error instead of this response."""

    message: str


Action = Start | Segment | Whole | Finish | Refuse


def is_event_stream(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a response's body is a stream of events: an event media type, or no
    ``Content-Length`` (chunked or read to the close, as streaming APIs answer)."""
    length = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-type":
            if value.split(";", 1)[0].strip().lower() in EVENT_STREAM_TYPES:
                return True
        elif lower == "content-length":
            length = True
    return not length


def flush_delay_for(headers: Iterable[tuple[str, str]], *, bulk: float, stream: float) -> float:
    """The delay for a response with these headers: ``stream`` for event streams."""
    return stream if is_event_stream(headers) else bulk


class Segmenter:
    """Decides, for one response, when to store its head and each segment.

    Args:
        now: when the response head arrived (any monotonic clock, in seconds).
        delay: the longest a byte waits before it is sent.
        segment_size: a segment is cut as soon as this many bytes wait.
        inline_limit: a body up to this size that ends in time goes inline in the head.
        limit: the most body bytes relayed; past it the body ends with ``limit_message``.
    """

    def __init__(self, *, now: float, delay: float, segment_size: int, inline_limit: int,
                 limit: int | None = None, limit_message: str = "response too large") -> None:
        if delay < 0 or segment_size <= 0 or inline_limit < 0:
            raise ValueError("need delay >= 0, segment_size > 0 and inline_limit >= 0")
        self.delay, self.segment_size, self.inline_limit = delay, segment_size, inline_limit
        self.limit, self.limit_message = limit, limit_message
        self.started = False  # the head is stored (or about to be, by the actions returned)
        self.done = False  # the response is complete, cut or refused: nothing more to do
        self.cut = False  # the body went over ``limit``
        self.total = 0  # body bytes accepted
        self._buffer = bytearray()
        self._since = now  # arrival of the oldest thing not sent yet (the head, then a byte)

    def deadline(self) -> float | None:
        """When :meth:`tick` must be called next; None while nothing waits."""
        if self.done or (self.started and not self._buffer):
            return None
        return self._since + self.delay

    def feed(self, data: bytes, now: float) -> list[Action]:
        """Bytes the upstream sent, arrived at ``now``."""
        self._check_open()
        if not data:
            return []
        if self.started and not self._buffer:
            self._since = now
        self.total += len(data)
        if self.limit is not None and self.total > self.limit:
            return self._cut(data[: len(data) - (self.total - self.limit)])
        self._buffer += data
        actions: list[Action] = []
        if not self.started and len(self._buffer) > self.inline_limit:
            actions.append(self._start())
        if self.started and len(self._buffer) >= self.segment_size:
            while len(self._buffer) >= self.segment_size:
                actions.append(Segment(self._take(self.segment_size)))
            # what is left arrived in this call: a full segment was cut from older bytes
            self._since = now
        return actions

    def tick(self, now: float) -> list[Action]:
        """Send whatever waited past its deadline."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        actions: list[Action] = []
        if not self.started:
            actions.append(self._start())
        actions.extend(self._flush())
        return actions

    def end(self) -> list[Action]:
        """The upstream body ended cleanly."""
        self._check_open()
        self.done = True
        if not self.started:
            data = bytes(self._buffer)
            self._buffer.clear()
            return [Whole(data)]
        return [*self._flush(), Finish()]

    def fail(self, message: str) -> list[Action]:
        """The upstream body broke off. Before the head is stored this returns nothing
        and the caller answers with an error response; after, the body ends with
        ``message`` in its trailer."""
        self._check_open()
        self.done = True
        if not self.started:
            return []
        return [*self._flush(), Finish(message)]

    def _cut(self, keep: bytes) -> list[Action]:
        self.done = self.cut = True
        if not self.started:
            self._buffer.clear()
            return [Refuse(self.limit_message)]
        self._buffer += keep
        return [*self._flush(), Finish(self.limit_message)]

    def _start(self) -> Start:
        self.started = True
        return Start()

    def _flush(self) -> list[Action]:
        return [Segment(self._take(self.segment_size)) for _ in range(
            -(-len(self._buffer) // self.segment_size))]

    def _take(self, size: int) -> bytes:
        """The first ``size`` bytes of the buffer, removed from it (one copy)."""
        with memoryview(self._buffer) as view, view[:size] as part:
            data = bytes(part)
        del self._buffer[:size]
        return data

    def _check_open(self) -> None:
        if self.done:
            raise RuntimeError("the response is already complete")

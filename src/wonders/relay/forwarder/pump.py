"""The response pump: an upstream body, as it arrives, into sealed segments in the mailbox.

A short loop over pure pieces. A reader task turns the body into events (:class:`Data`,
:class:`End`, :class:`Broke`; :class:`Idle` when the segmenter's deadline passes first);
the :class:`~wonders.relay.forwarder.segmenter.Segmenter` turns each event, with the time
it happened, into actions; the :class:`~wonders.relay.forwarder.writer.ResponseWriter`
carries them out, waiting for room as :class:`~wonders.relay.forwarder.flow.FlowWindow`
says. The reader's queue is bounded, so while the writer waits for room, nothing more is
read from the upstream.

What a broken or oversized body comes to:

* broken off before anything was stored: a 504 (it stalled) or a 502 answer instead;
  after: the body ends with an error trailer (``upstream-broke``);
* over the client's ``max_response_bytes`` before anything was stored: a 502 answer;
  after: an error trailer (``response-too-large``);
* the client makes no room in time: the response ends there (``client-stopped-reading``
  or ``total-timeout``; see :mod:`.flow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from wonders.crypto import ResponseHead
from wonders.relay.forwarder.outcome import Counters, _Outcome
from wonders.relay.forwarder.seam import BodyBrokeOff, UpstreamResponse
from wonders.relay.forwarder.segmenter import (
    Action,
    Finish,
    Refuse,
    Segment,
    Segmenter,
    Start,
    Whole,
)
from wonders.relay.forwarder.writer import ErrorReply, NoRoom, ResponseWriter

__all__ = ["Broke", "Data", "End", "Event", "Idle", "Pump"]

log = logging.getLogger("wonders.forwarder")


@dataclass(frozen=True, slots=True)
class Data:
    """Body bytes arrived."""

    chunk: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The body ended cleanly."""


@dataclass(frozen=True, slots=True)
class Broke:
    """The body broke off."""

    error: BodyBrokeOff


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing arrived before the segmenter's deadline."""


Event = Data | End | Broke | Idle


class _Reader:
    """Reads the body in a task into a small queue (so a writer that waits for room holds
    the upstream back), and hands out events."""

    def __init__(self, response: UpstreamResponse) -> None:
        self._queue: asyncio.Queue[Data | End | Broke] = asyncio.Queue(maxsize=4)
        self._task = asyncio.create_task(self._read(response))

    async def _read(self, response: UpstreamResponse) -> None:
        try:
            async for chunk in response:
                await self._queue.put(Data(chunk))
            await self._queue.put(End())
        except BodyBrokeOff as exc:
            await self._queue.put(Broke(exc))

    async def next(self, wait: float | None) -> Event:
        """The next event; :class:`Idle` if none comes within ``wait`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), wait)
        except TimeoutError:
            return Idle()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Pump:
    """Relays one upstream body through ``segmenter`` to ``writer``; ``head`` is stored
    when the segmenter says so. ``outcome`` and ``counters`` are told what happened."""

    def __init__(self, writer: ResponseWriter, head: ResponseHead, segmenter: Segmenter, *,
                 outcome: _Outcome, counters: Counters,
                 monotonic: Callable[[], float]) -> None:
        self._writer, self._head, self._segmenter = writer, head, segmenter
        self.outcome, self.counters = outcome, counters
        self._monotonic = monotonic

    async def run(self, response: UpstreamResponse) -> None:
        segmenter = self._segmenter
        reader = _Reader(response)
        self._writer.window.start(self._monotonic())
        try:
            while not segmenter.done:
                deadline = segmenter.deadline()
                wait = None if deadline is None else max(0.0, deadline - self._monotonic())
                await self._act(self._actions(await reader.next(wait)))
        except NoRoom as stopped:
            # No free slot, so no error trailer: the client sees a truncated body (if it
            # ever reads again); what is stored is left to the janitor.
            log.warning("response %s to %s ended: %s", self._writer.request_id,
                        self._writer.client, stopped)
            self.outcome.error = stopped.code
        finally:
            await reader.close()
            self.counters.bytes_down += segmenter.total

    def _actions(self, event: Event) -> list[Action]:
        """What the segmenter makes of ``event``, happening now."""
        segmenter, now = self._segmenter, self._monotonic()
        match event:
            case Data(chunk):
                actions = segmenter.feed(chunk, now)
                if segmenter.cut:
                    self.outcome.error = "response-too-large"
                return actions
            case Idle():
                return segmenter.tick(now)
            case End():
                return segmenter.end()
            case Broke(error):
                return self._broke(error)

    def _broke(self, error: BodyBrokeOff) -> list[Action]:
        self.counters.errors += 1
        actions = self._segmenter.fail(f"the upstream response broke off: {error}")
        if not actions:  # nothing stored yet: answer with an error instead
            if error.timeout:
                raise ErrorReply(504, "upstream-timeout",
                                 "wonders: the upstream server stopped sending")
            raise ErrorReply(502, "upstream-error",
                             f"wonders: the upstream response broke off: {error}")
        self.outcome.error = "upstream-broke"
        return actions

    async def _act(self, actions: list[Action]) -> None:
        """Carry out what the segmenter decided, in order."""
        writer = self._writer
        for action in actions:
            match action:
                case Start():
                    await writer.start(self._head)
                case Segment(data):
                    await writer.segment(data)
                case Whole(data):
                    await writer.whole(self._head, data)
                case Finish(error):
                    await writer.finish(error)
                case Refuse(message):
                    raise ErrorReply(502, "response-too-large", f"wonders: {message}")

"""How a forwarder runs: its settings, every duration in seconds. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ForwarderSettings"]


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    """How a forwarder runs; every duration in seconds."""

    id: str = "forwarder"
    poll_fast: float = 0.01
    poll_slow: float = 1.0
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    #: How soon to look again at a request another live forwarder holds (a race lost, a
    #: live claim, a takeover lost); 0 means ``stale_after / 2``.
    recheck_interval: float = 0.0
    max_in_flight: int = 64
    skew: float = 300.0
    response_lifetime: float = 300.0
    segment_size: int = 4 * 1024 * 1024
    #: Flow control: at most this many response segments of one response wait unread in
    #: the mailbox. The next one is stored once the client has read (and deleted) the
    #: oldest; meanwhile the upstream is not read, so TCP backpressure reaches the server.
    #: A client that reads nothing for ``read_timeout`` ends its response there.
    max_unread_segments: int = 4
    #: The longest a response byte waits in the forwarder before it is sent (counted from
    #: the oldest byte waiting, so a steady stream flows); event streams use the shorter
    #: ``stream_flush_delay``. See :mod:`wonders.relay.forwarder.segmenter`.
    flush_delay: float = 0.25
    stream_flush_delay: float = 0.01
    inline_limit: int = 64 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    total_timeout: float = 3600.0
    max_redirects: int = 10
    grace: float = 30.0
    #: Longest request lifetime accepted; claims are kept this long (plus skew), so a
    #: copied head is refused as a replay for as long as it could still open.
    max_request_lifetime: float = 3600.0
    janitor_interval: float = 60.0
    #: An audit batch is written every ``audit_interval`` seconds or ``audit_batch``
    #: records; with ``audit_capacity`` records waiting, no new request is started.
    audit_interval: float = 1.0
    audit_batch: int = 500
    audit_capacity: int = 10_000

    @property
    def recheck(self) -> float:
        """Seconds until a request held by another forwarder is looked at again."""
        return self.recheck_interval or self.stale_after / 2

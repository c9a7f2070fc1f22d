"""Forwarder metrics for Prometheus (``wonders forward --metrics-port``).

Counters and histograms are fed from each request's audit record, so the metrics and the
audit log count the same things. Names:

- ``wonders_requests_total{client,decision,status}``: attempts handled (``status`` is
  the HTTP status, or ``none`` for objects refused before any answer);
- ``wonders_body_bytes_total{client,direction}``: body bytes, ``up`` (to the upstream)
  and ``down`` (to the client);
- ``wonders_request_seconds{client}``: from claim to answer stored;
  ``wonders_upstream_seconds{client}``: the upstream exchange alone;
- ``wonders_in_flight``, ``wonders_pending_requests`` (request heads seen at the last
  poll), ``wonders_audit_waiting_records``, ``wonders_audit_blocked``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    """One forwarder's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wonders_requests", "Request attempts handled.",
                                ["client", "decision", "status"], registry=r)
        self.bytes = Counter("wonders_body_bytes", "Body bytes relayed.",
                             ["client", "direction"], registry=r)
        self.seconds = Histogram("wonders_request_seconds",
                                 "Seconds from claim to the answer stored.", ["client"],
                                 buckets=_BUCKETS, registry=r)
        self.upstream = Histogram("wonders_upstream_seconds",
                                  "Seconds of the upstream exchange.", ["client"],
                                  buckets=_BUCKETS, registry=r)
        self.in_flight = Gauge("wonders_in_flight", "Requests being handled now.", registry=r)
        self.pending = Gauge("wonders_pending_requests",
                             "Request heads in the mailbox at the last poll.", registry=r)
        self.audit_waiting = Gauge("wonders_audit_waiting_records",
                                   "Audit records not yet stored.", registry=r)
        self.audit_blocked = Gauge("wonders_audit_blocked",
                                   "1 while no new request is taken because audit records "
                                   "cannot be stored.", registry=r)

    def watch(self, in_flight: Callable[[], float], audit_waiting: Callable[[], float],
              audit_blocked: Callable[[], float]) -> None:
        """Read these gauges from the forwarder at each scrape."""
        self.in_flight.set_function(in_flight)
        self.audit_waiting.set_function(audit_waiting)
        self.audit_blocked.set_function(audit_blocked)

    def observe(self, record: dict[str, Any]) -> None:
        """Count one attempt from its audit record."""
        client = str(record.get("client"))
        status = str(record.get("status") or "none")
        self.requests.labels(client, str(record.get("decision")), status).inc()
        self.bytes.labels(client, "up").inc(int(record.get("up") or 0))
        self.bytes.labels(client, "down").inc(int(record.get("down") or 0))
        if record.get("total_ms") is not None:
            self.seconds.labels(client).observe(record["total_ms"] / 1000)
        if record.get("upstream_ms") is not None:
            self.upstream.labels(client).observe(record["upstream_ms"] / 1000)

    def serve(self, port: int, address: str = "127.0.0.1") -> tuple[str, int]:
        """Serve ``/metrics`` from a thread; returns the address and port bound."""
        server, _thread = start_http_server(port, address, self.registry)
        host, bound = server.server_address[:2]
        return str(host), int(bound)

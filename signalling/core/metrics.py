"""Prometheus metrics, one registry per application so that several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ws_connections = Gauge("expertcall_ws_connections", "Open signalling WebSockets", registry=r)
        self.ws_messages = Counter(
            "expertcall_ws_messages", "Signalling messages received", ["type"], registry=r
        )
        self.ws_errors = Counter("expertcall_ws_errors", "Protocol errors sent", ["code"], registry=r)
        self.sessions = Gauge("expertcall_sessions", "Sessions by state", ["state"], registry=r)
        self.bookings = Counter(
            "expertcall_bookings", "Booking events: booked, reminder, due, cancelled, missed", ["event"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["Metrics", "CONTENT_TYPE"]

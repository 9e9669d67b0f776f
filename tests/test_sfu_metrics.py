"""Per-track stats exported as Prometheus gauges; vanished tracks vanish from /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sfu.api import Stats
from sfu.metrics import MediaMetrics


def _track(participant: str, direction: str, **values: object) -> dict[str, object]:
    return {"track_id": "alice:0", "participant_id": participant, "kind": "video",
            "direction": direction, **values}


def test_update_exports_and_forgets() -> None:
    registry = CollectorRegistry()
    metrics = MediaMetrics(registry)
    metrics.update(Stats("room", [
        _track("alice", "inbound", bitrate=500_000, packets=10, packets_lost=1, jitter=0.002,
               rtt=None),
        _track("bob", "outbound", bitrate=480_000, packets=9, packets_lost=0, jitter=0.001,
               rtt=0.004),
    ]))
    text = generate_latest(registry).decode()
    assert ('expertcall_media_bitrate_bps{direction="inbound",kind="video",participant="alice",'
            'room="room",track="alice:0"} 500000.0') in text
    assert 'expertcall_media_rtt_seconds{direction="outbound"' in text
    assert 'expertcall_media_rtt_seconds{direction="inbound"' not in text  # unknown, not 0
    metrics.update(Stats("room", [_track("alice", "inbound", bitrate=1)]))
    text = generate_latest(registry).decode()
    assert 'participant="bob"' not in text
    metrics.forget("room")
    assert "alice" not in generate_latest(registry).decode()

"""Media stats in /metrics: sums and extremes by kind and direction, never a room or a user id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sfu.api import Stats
from signalling.app.media_metrics import MediaMetrics


def _track(participant: str, direction: str, **values: object) -> dict[str, object]:
    return {"track_id": f"{participant}:0", "participant_id": participant, "kind": "video",
            "direction": direction, **values}


def test_update_aggregates_and_forgets_without_naming_anyone() -> None:
    registry = CollectorRegistry()
    metrics = MediaMetrics(registry)
    metrics.update(Stats("session-f3a9", [
        _track("alice", "inbound", bitrate=500_000, packets=10, packets_lost=1, jitter=0.002, rtt=None),
        _track("bob", "outbound", bitrate=480_000, packets=9, packets_lost=0, jitter=0.001, rtt=0.004,
               packets_dropped=3, send_errors=1),
    ]))
    metrics.update(Stats("session-77b2", [_track("carol", "inbound", bitrate=100_000, jitter=0.006)]))
    text = generate_latest(registry).decode()
    assert 'expertcall_media_tracks{direction="inbound",kind="video"} 2.0' in text
    assert 'expertcall_media_bitrate_bps{direction="inbound",kind="video"} 600000.0' in text
    assert 'expertcall_media_jitter_seconds_max{direction="inbound",kind="video"} 0.006' in text
    assert 'expertcall_media_jitter_seconds_mean{direction="inbound",kind="video"} 0.004' in text
    assert 'expertcall_media_rtt_seconds_max{direction="outbound",kind="video"} 0.004' in text
    assert 'expertcall_media_rtt_seconds_max{direction="inbound"' not in text  # unknown, not 0
    assert 'expertcall_media_packets_dropped{direction="outbound",kind="video"} 3.0' in text
    assert 'expertcall_media_send_errors{direction="outbound",kind="video"} 1.0' in text
    for secret in ("alice", "bob", "carol", "session-f3a9", "session-77b2", "room=", "participant="):
        assert secret not in text
    metrics.forget("session-f3a9")
    text = generate_latest(registry).decode()
    assert 'expertcall_media_tracks{direction="inbound",kind="video"} 1.0' in text
    assert 'direction="outbound"' not in text

"""Per-track media statistics as Prometheus gauges, on a registry the caller owns.

The control plane polls ``GetStats`` per room (every few seconds, not per packet) and hands the
reply to ``MediaMetrics.update``; tracks that are gone disappear from /metrics with ``forget``
or at the next update of their room.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from sfu.api import Stats

LABELS = ["room", "participant", "track", "kind", "direction"]
FIELDS = {
    "bitrate": ("expertcall_media_bitrate_bps", "Bitrate over the last second"),
    "packets": ("expertcall_media_packets", "RTP packets received (inbound) or sent (outbound)"),
    "packets_lost": ("expertcall_media_packets_lost", "RTP packets lost"),
    "jitter": ("expertcall_media_jitter_seconds", "Interarrival jitter"),
    "rtt": ("expertcall_media_rtt_seconds", "Round-trip time to the subscriber"),
}


class MediaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges = {
            key: Gauge(name, help_text, LABELS, registry=registry)
            for key, (name, help_text) in FIELDS.items()
        }
        self._seen: dict[str, set[tuple[str, ...]]] = {}

    def update(self, stats: Stats) -> None:
        current: set[tuple[str, ...]] = set()
        for track in stats.tracks:
            labels = self._labels(stats.room_id, track)
            current.add(labels)
            for key, gauge in self._gauges.items():
                value = track.get(key)
                if isinstance(value, (int, float)):
                    gauge.labels(*labels).set(value)
        for labels in self._seen.get(stats.room_id, set()) - current:
            self._remove(labels)
        self._seen[stats.room_id] = current

    def forget(self, room_id: str) -> None:
        for labels in self._seen.pop(room_id, set()):
            self._remove(labels)

    def _remove(self, labels: tuple[str, ...]) -> None:
        for gauge in self._gauges.values():
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    @staticmethod
    def _labels(room_id: str, track: dict[str, Any]) -> tuple[str, ...]:
        return (room_id, str(track.get("participant_id", "")), str(track.get("track_id", "")),
                str(track.get("kind", "")), str(track.get("direction", "")))

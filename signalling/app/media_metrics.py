"""Media statistics for Prometheus, aggregated by track kind and direction.

The control plane polls ``GetStats`` per room (every few seconds, not per packet) and hands the
reply to ``MediaMetrics.update``; a closed room is dropped with ``forget``. /metrics shows sums
and extremes over every open track, labelled only by ``kind`` (audio, video) and ``direction``
(inbound, outbound): no room (a session id) and no participant (a user id), so a scrape reveals
nobody's calls and the number of series stays fixed however many rooms are open.

``WorkerMetrics`` shows a worker pool's processes: up, restarts, rooms, streams, packets/s, CPU,
and the datagrams their shared media sockets dropped; ``PlaneMetrics`` the last for the SFU in the
server's own process (worker "0").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Iterator, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sfu.api import Stats

LABELS = ["kind", "direction"]
# Summed over tracks.
SUMS = {
    "bitrate": ("expertcall_media_bitrate_bps", "Bitrate over the last second, summed over tracks"),
    "packets": ("expertcall_media_packets", "RTP packets received (inbound) or sent (outbound), summed over open tracks"),
    "packets_lost": ("expertcall_media_packets_lost", "RTP packets lost, summed over open tracks"),
    "packets_dropped": ("expertcall_media_packets_dropped", "RTP packets not sent to a subscriber whose socket was full or gone, summed over open tracks"),
    "send_errors": ("expertcall_media_send_errors", "Failures sending to a subscriber (each isolated to it), summed over open tracks"),
}
# Largest and mean over the tracks that report them.
SPREADS = {
    "jitter": ("expertcall_media_jitter_seconds", "Interarrival jitter"),
    "rtt": ("expertcall_media_rtt_seconds", "Round-trip time to the subscriber"),
}


class MediaMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._rooms: dict[str, list[dict[str, Any]]] = {}
        registry.register(self)

    def update(self, stats: Stats) -> None:
        self._rooms[stats.room_id] = list(stats.tracks)

    def forget(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    def collect(self) -> Iterator[Metric]:
        tracks: dict[tuple[str, str], int] = {}
        sums: dict[str, dict[tuple[str, str], float]] = {key: {} for key in SUMS}
        spreads: dict[str, dict[tuple[str, str], list[float]]] = {key: {} for key in SPREADS}
        for room in self._rooms.values():
            for track in room:
                labels = (str(track.get("kind", "")), str(track.get("direction", "")))
                tracks[labels] = tracks.get(labels, 0) + 1
                for key in SUMS:
                    value = track.get(key)
                    if isinstance(value, (int, float)):
                        sums[key][labels] = sums[key].get(labels, 0.0) + value
                for key in SPREADS:
                    value = track.get(key)
                    if isinstance(value, (int, float)):
                        spreads[key].setdefault(labels, []).append(float(value))
        family = GaugeMetricFamily("expertcall_media_tracks", "Open tracks", labels=LABELS)
        for labels, count in sorted(tracks.items()):
            family.add_metric(labels, count)
        yield family
        for key, (name, help_text) in SUMS.items():
            family = GaugeMetricFamily(name, help_text, labels=LABELS)
            for labels, total in sorted(sums[key].items()):
                family.add_metric(labels, total)
            yield family
        for key, (name, help_text) in SPREADS.items():
            largest = GaugeMetricFamily(f"{name}_max", f"{help_text}, the largest over tracks", labels=LABELS)
            mean = GaugeMetricFamily(f"{name}_mean", f"{help_text}, the mean over tracks", labels=LABELS)
            for labels, values in sorted(spreads[key].items()):
                largest.add_metric(labels, max(values))
                mean.add_metric(labels, sum(values) / len(values))
            yield largest
            yield mean


class WorkerHealth(Protocol):
    """What /metrics reads of each SFU worker (sfu.pool.WorkerState)."""

    index: int
    up: bool
    restarts: int
    rooms: set[str]
    streams: int
    packets_per_second: float
    cpu: float
    dropped: int


class WorkerMetrics(Collector):
    """A worker pool's processes for Prometheus, labelled by worker index (a fixed, small set);
    with ``member="node"`` and ``label`` the node id, a signalling node's SFU nodes
    (``expertcall_sfu_node_*``, sfu/remote.py), which restart on their own (no restart counter)."""

    def __init__(self, health: Callable[[], Sequence[WorkerHealth]], registry: CollectorRegistry,
                 member: str = "worker", label: Callable[[Any], str] = lambda w: str(w.index)) -> None:
        self.health = health
        self.member = member
        self.label = label
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        workers = self.health()
        m = self.member
        gauges = {
            "up": (f"expertcall_sfu_{m}_up", f"1 while the SFU {m} serves its rooms",
                   lambda w: 1.0 if w.up else 0.0),
            "rooms": (f"expertcall_sfu_{m}_rooms", f"Rooms placed on the {m}", lambda w: float(len(w.rooms))),
            "streams": (f"expertcall_sfu_{m}_streams", f"Producers and consumers in the {m}, as last reported",
                        lambda w: float(w.streams)),
            "packets": (f"expertcall_sfu_{m}_packets_per_second",
                        f"RTP packets received and sent per second by the {m}, as last reported",
                        lambda w: w.packets_per_second),
            "cpu": (f"expertcall_sfu_{m}_cpu_cores", f"CPU the {m} used, in cores (a node: the mean per worker), "
                    "as last reported", lambda w: w.cpu),
        }
        for name, help_text, value in gauges.values():
            family = GaugeMetricFamily(name, help_text, labels=[m])
            for worker in workers:
                family.add_metric([self.label(worker)], value(worker))
            yield family
        yield dropped_datagrams(m, [(self.label(w), w.dropped) for w in workers])
        if m != "worker":
            return
        restarts = CounterMetricFamily("expertcall_sfu_worker_restarts",
                                       "Times the worker was started again after it died", labels=["worker"])
        for worker in workers:
            restarts.add_metric([str(worker.index)], float(worker.restarts))
        yield restarts


class PlaneMetrics(Collector):
    """The in-process SFU's dropped datagrams, as worker "0" (a plane with per-connection sockets
    has no shared socket to count at)."""

    def __init__(self, plane: Any, registry: CollectorRegistry) -> None:
        self.plane = plane  # sfu.worker.LocalMediaPlane
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        mux = self.plane.mux
        yield dropped_datagrams("worker", [("0", mux.dropped)] if mux is not None else [])


def dropped_datagrams(member: str, counts: Sequence[tuple[str, int]]) -> Metric:
    """Datagrams that reached a shared media socket (sfu/udp_mux.py) from nobody it knew: an
    unknown ICE ufrag, a failed MESSAGE-INTEGRITY, an address never authenticated. A steady rise
    is someone probing or spoofing the media port."""
    family = CounterMetricFamily(f"expertcall_sfu_{member}_dropped_datagrams",
                                 f"Datagrams the {member}'s shared media sockets dropped as unknown or forged",
                                 labels=[member])
    for label, count in counts:
        family.add_metric([label], float(count))
    return family

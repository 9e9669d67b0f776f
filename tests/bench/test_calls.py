"""``expertcall bench media --calls``: two-party calls through expertcall and through Janus.

Behaviour, not speed: a tiny sweep reports every figure for both servers; the light clients
answer a server's offer and send receiver reports; the process-tree readers and the sweep's
arithmetic (rounds paired, clean ceiling, audio loss, clients falling behind) do what they say.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.report import call_ratios, calls_per_core, calls_table, summarise
from signalling.app.cli import main
from tests.backends import redis_available
from tests.externals import require

pytestmark = pytest.mark.integration


def test_two_calls_through_expertcall_and_janus_report_every_figure(tmp_path: Path) -> None:
    require(shutil.which("janus") is not None, "janus (apt-get install janus)")
    require(shutil.which("cc") is not None, "a C compiler for the Janus loopback shim (apt-get install gcc)")
    out, png = tmp_path / "calls.json", tmp_path / "calls.png"
    result = CliRunner().invoke(main, [
        "bench", "media", "--calls", "2", "--duration", "3", "--settle", "1", "--reference", "janus",
        "--pin-server", "0", "--client-nice", "1", "--json", str(out), "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    assert [(r["target"], r["calls"], r["round"]) for r in report["runs"]] == [("expertcall", 2, 1), ("janus", 2, 1)]
    assert report["config"]["server_cpus"] == "0" and report["config"]["client_nice"] == 1
    assert report["machine"]["janus"]
    for run in report["runs"]:
        assert run["calls_up"] == 2 and run["connected"] == 4 and not run["call_errors"], run["call_errors"]
        assert run["server_processes"] >= 1
        assert run["server_cpu_seconds_per_second"] > 0 and run["cpu_ms_per_call"] > 0
        # Each participant receives the other's video and audio: 4 streams of each per 2 calls.
        assert run["forwarded_packets_per_second"] > 4 * 50 and run["cpu_us_per_forwarded_packet"] > 0
        assert 0 < run["fps"]["min"] <= run["fps"]["max"] < 60
        assert 100 < run["bitrate_kbps"]["p50"] < 3000
        assert 0 <= run["packet_loss_pct"] < 50 and 0 <= run["audio_packet_loss_pct"] < 50
        ttff = run["time_to_first_frame_ms"]
        assert ttff["missing"] == 0 and 0 < ttff["p50"] <= ttff["p95"] < 10_000
        latency = run["added_latency_ms"]
        assert latency["samples"] > 0 and 0 <= latency["p50"] <= latency["p99"] < 1000
        memory = run["memory_kb"]
        assert 0 < memory["idle"]["uss"] <= memory["idle"]["pss"] <= memory["idle"]["rss"]
        assert set(run["memory_per_call_kb"]) == {"uss", "rss", "anon"}
        assert all(p["sent_fps"] > 0 for p in run["per_subscriber"])
        assert run["publisher_stats"][0]["count"] == 4 and run["publisher_stats"][0]["frames_sent"] > 4 * 60
        assert run["call_setup_ms"]["p50"] > 0
    assert set(report["by_count"]) == {"expertcall", "janus"}
    assert report["by_count"]["janus"]["2"]["cpu_ms_per_call"]["median"] > 0
    assert report["reference"]["per_count"]["2"]["cpu_ms_per_call"]["median"] > 0
    assert "x expertcall's CPU per call at 2 calls" in result.output


async def test_light_subscriber_answers_a_servers_offer_and_reports_reception(monkeypatch: Any) -> None:
    """A light publisher offers, a light subscriber answers (as to expertcall's or Janus's offer):
    frames and latency are counted, and the publisher hears receiver reports and a REMB."""
    from aioice import ice

    from bench import encoded
    from bench.clients import PICTURE_IDS, Publisher, Subscriber
    from bench.loopback import use_loopback_ice

    monkeypatch.setattr(ice, "get_host_addresses", ice.get_host_addresses)
    use_loopback_ice()
    send_times = [0.0] * PICTURE_IDS
    publisher = Publisher("", "", encoded.video(fps=30), encoded.audio(), send_times)
    subscriber = Subscriber("", "", send_times, audio=True, receiver_reports=True)
    subscriber.started_at = time.time()
    subscriber.measuring = True
    remb: list[int] = []
    try:
        await publisher.negotiate(subscriber.answer)
        video_sender = publisher.pc.getTransceivers()[0].sender
        handle_rtcp = video_sender._handle_rtcp_packet

        async def spy(packet: Any) -> None:
            if getattr(packet, "fmt", None) == 15:
                remb.append(len(packet.fci))
            await handle_rtcp(packet)

        setattr(video_sender, "_handle_rtcp_packet", spy)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (subscriber.frames > 30 and remb):
            await asyncio.sleep(0.1)
        stats = await video_sender.getStats()
        # What a NACK would get back from our history: the packet as aiortc would have written it.
        history = getattr(video_sender, "_RTCRtpSender__rtp_history")
        sent = history.get(next(iter(dict(history))))
        mid = publisher.pc.getTransceivers()[0].mid
    finally:
        await subscriber.stop()
        await publisher.stop()
    assert subscriber.first_frame_at > subscriber.started_at and subscriber.keyframes >= 1
    assert subscriber.frames > 30 and subscriber.audio_counters.received > 20
    assert subscriber.latencies and max(subscriber.latencies) < 1
    assert subscriber.video_ssrc and subscriber.audio_ssrc
    assert sent.ssrc == subscriber.video_ssrc and sent.payload_type in subscriber.video_types
    assert sent.extensions.mid == mid and sent.extensions.abs_send_time > 0 and sent.payload[0] & 0x80
    assert remb, "no REMB reached the publisher"
    # aiortc's sender turns a receiver report about its stream into remote-inbound stats.
    assert any(s.type == "remote-inbound-rtp" for s in stats.values())


def test_client_processes_are_reniced_as_asked() -> None:
    import multiprocessing

    from bench.workers import renice

    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(10,), daemon=True)
    proc.start()
    try:
        assert proc.pid is not None
        target = min(19, os.getpriority(os.PRIO_PROCESS, proc.pid) + 3)  # raising it needs no root
        renice(proc, target)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == target
    finally:
        proc.terminate()
        proc.join()


def test_ntp_time_is_aiortcs_without_datetime() -> None:
    from aiortc import clock

    from bench.clients import _ntp_now

    ours, theirs = _ntp_now(), clock.current_ntp_time()
    assert abs(theirs - ours) < (1 << 32) // 100  # 10 ms apart at most, measured one after the other


def test_process_tree_cpu_and_memory_count_children() -> None:
    from bench.procfs import process_tree, processes_cpu_seconds, tree_cpu_seconds, tree_memory

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    # the child's argv as an SFU worker's: processes_cpu_seconds names it by it
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {burn!r}, "
                               "'sfu.worker_process', '7', '9']); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (len(process_tree(parent.pid)) < 2 or tree_cpu_seconds(parent.pid) < 0.3):
            time.sleep(0.05)
        tree = process_tree(parent.pid)
        assert tree[0] == parent.pid and len(tree) == 2
        child = tree[1]
        # The child burnt 0.3 s; the parent only started it.
        assert tree_cpu_seconds(parent.pid) >= 0.3 > tree_cpu_seconds(child) - 0.3
        memory = tree_memory(parent.pid)
        assert memory.processes == 2 and 0 < memory.uss_kb <= memory.pss_kb <= memory.rss_kb
        assert 0 < memory.anon_kb < memory.rss_kb
        assert tree_memory(child).rss_kb < memory.rss_kb
        by_process = processes_cpu_seconds(parent.pid)
        assert by_process[parent.pid][0] == "main" and by_process[child][0] == "sfu-worker-7"
        assert by_process[parent.pid][1] < by_process[child][1]  # the child burns, the parent waits
    finally:
        for pid in reversed(process_tree(parent.pid)):
            os.kill(pid, 9)
        parent.wait()


def test_calls_through_one_and_two_sfu_workers_show_each_processs_cpu(tmp_path: Path) -> None:
    out = tmp_path / "calls.json"
    result = CliRunner().invoke(main, [
        "bench", "media", "--calls", "2", "--sfu-workers", "1,2", "--duration", "2", "--settle", "1",
        "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["targets"] == ["expertcall", "expertcall-2w"] and report["config"]["sfu_workers"] == [1, 2]
    one, two = report["runs"]
    assert (one["sfu_workers"], two["sfu_workers"]) == (1, 2)
    assert one["calls_up"] == two["calls_up"] == 2
    assert list(one["server_process_cores"]) == ["main"]
    assert list(two["server_process_cores"]) == ["main", "sfu-worker-0", "sfu-worker-1"]
    # the calls' media ran in the workers, both of them, not in the main process
    assert all(two["server_process_cores"][w] > two["server_process_cores"]["main"]
               for w in ("sfu-worker-0", "sfu-worker-1"))
    assert two["busiest_process_cores"] == max(two["server_process_cores"].values())
    assert report["sfu_workers_ratios"]["expertcall-2w"]["per_count"]["2"]["cpu_ms_per_call"]["median"] > 0
    assert "cores by process: main" in result.output


def test_calls_through_a_signalling_node_and_an_sfu_node_count_both_processes(tmp_path: Path) -> None:
    require(redis_available(), "redis-server on 127.0.0.1:6379")
    out = tmp_path / "calls.json"
    result = CliRunner().invoke(main, [
        "bench", "media", "--calls", "2", "--sfu-node", "--duration", "2", "--settle", "1", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["targets"] == ["expertcall", "expertcall-node"] and report["config"]["sfu_node"]
    one, split = report["runs"]
    assert one["calls_up"] == split["calls_up"] == 2
    # the launcher waits; the signalling node signals; the media runs in the SFU node
    assert list(split["server_process_cores"]) == ["main", "sfu-node", "signalling-node"]
    assert split["server_process_cores"]["sfu-node"] > split["server_process_cores"]["signalling-node"]
    assert report["sfu_node_ratios"]["per_count"]["2"]["cpu_ms_per_call"]["median"] > 0


def _run(target: str, round_: int, calls: int, cpu: float, clean: bool = True, uss: float = 2000.0) -> dict[str, Any]:
    return {"target": target, "round": round_, "calls": calls, "clean": clean,
            "server_cpu_seconds_per_second": cpu, "cpu_ms_per_call": cpu * 1000 / calls,
            "cpu_us_per_forwarded_packet": cpu * 1e6 / (calls * 430), "memory_per_call_kb": {"uss": uss, "rss": uss, "anon": uss},
            "packet_loss_pct": 0.0, "audio_packet_loss_pct": 0.0, "fps": {"min": 30.0},
            "time_to_first_frame_ms": {"p95": 200.0}, "added_latency_ms": {"p50": 0.5, "p99": 3.0},
            "client_cpu_seconds_per_second": 0.3, "loadavg_1min_after": 1.5}


def test_ratios_pair_rounds_and_the_ceiling_needs_every_round_clean() -> None:
    runs = [_run("expertcall", 1, 10, 0.10), _run("janus", 1, 10, 0.20, uss=1000),   # 2x
            _run("expertcall", 2, 10, 0.20), _run("janus", 2, 10, 0.30, uss=1000),   # 1.5x on a slow phase
            _run("expertcall", 3, 10, 0.10), _run("janus", 3, 10, 0.25, uss=1000),   # 2.5x
            _run("expertcall", 1, 50, 0.40), _run("expertcall", 2, 50, 0.50, clean=False)]
    ratios = call_ratios(runs, "janus")["per_count"]
    assert ratios["10"]["cpu_ms_per_call"] == {"median": 2.0, "min": 1.5, "max": 2.5, "rounds": [2.0, 1.5, 2.5]}
    assert ratios["10"]["uss_kb_per_call"]["median"] == 0.5
    assert ratios["10"]["anon_kb_per_call"]["median"] == 0.5
    assert "50" not in ratios  # Janus did not run at 50
    # 50 calls were not clean in round 2: the ceiling comes from 10, at the median of its rounds.
    assert calls_per_core([r for r in runs if r["target"] == "expertcall"]) == {
        "largest_clean_calls": 10, "server_cpu_at_largest": 0.1, "calls_per_core": 100}
    table = calls_table(runs)
    assert table["expertcall"]["50"]["clean_rounds"] == 1 and table["expertcall"]["50"]["rounds"] == 2
    assert table["janus"]["10"]["cpu_ms_per_call"] == {"median": 25.0, "min": 20.0, "max": 30.0}


def test_summary_counts_audio_loss_and_notes_clients_that_fell_behind() -> None:
    def counters(at: float, video: int, audio: int, audio_expected: int) -> dict[str, float]:
        return {"at": at, "packets": video, "bytes": video * 1000, "expected": video, "frames": at * 30,
                "keyframes": 1, "audio_packets": audio, "audio_expected": audio_expected}

    def subscriber(audio_lost: int, skipped: int) -> dict[str, Any]:
        return {"ok": True, "error": "", "time_to_first_frame": 0.2, "latencies": [0.001],
                "before": counters(0, 0, 0, 0), "after": counters(2, 110, 100 - audio_lost, 100),
                "source_frames_sent": 60 - skipped, "source_frames_skipped": skipped}

    run = summarise("expertcall", 2, [subscriber(0, 0), subscriber(2, 0)], 0.1, 2.0, [], 30)
    assert run["audio_packet_loss_pct"] == 1.0 and run["per_subscriber"][1]["audio_loss_pct"] == 2.0
    assert run["per_subscriber"][0]["sent_fps"] == 30.0
    assert not run["clean"]  # 2% audio loss at one subscriber, though the video was perfect
    assert run["clients_fell_behind"] is False
    assert summarise("expertcall", 2, [subscriber(0, 3), subscriber(0, 0)], 0.1, 2.0, [], 30)["clients_fell_behind"]


@pytest.mark.parametrize("args, message", [
    (["--calls", "2", "--subscribers", "8"], "--subscribers is for the fan-out bench"),
    (["--calls", "2", "--reference", "mediarelay"], "with --calls use janus"),
    (["--reference", "janus"], "--reference janus runs with --calls"),
    (["--calls", "0"], "call counts must be at least 1"),
    (["--calls", "2", "--pin-server", "4096"], "are not all among this machine's"),
    (["--calls", "2", "--pin-server", "one"], "not a CPU list"),
    (["--calls", "2", "--sfu-workers", "0"], "SFU worker counts must be at least 1"),
    (["--sfu-workers", "2"], "--sfu-workers is for --calls"),
    (["--sfu-node"], "--sfu-node is for --calls"),
])
def test_calls_options_are_checked_before_anything_starts(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", "media", *args, "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.json").exists()


def test_janus_is_configured_for_loopback_only_and_the_shim_shows_it_loopback(tmp_path: Path) -> None:
    from bench.janus import loopback_shim, write_config

    config = write_config(tmp_path / "janus", 18188, Path("/nonexistent/janus"))
    text = config.read_text()
    assert 'interface = "127.0.0.1"' in text and 'ice_enforce_list = "127.0.0.1"' in text
    assert sorted(p.name for p in (tmp_path / "janus" / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (tmp_path / "janus" / "transports").iterdir()) == ["libjanus_websockets.so"]
    assert 'ws_ip = "127.0.0.1"' in (tmp_path / "janus" / "janus.transport.websockets.jcfg").read_text()

    require(shutil.which("cc") is not None, "a C compiler (apt-get install gcc)")
    shim = loopback_shim(tmp_path / "cache")
    assert loopback_shim(tmp_path / "cache") == shim  # compiled once
    # getifaddrs() through ctypes: "lo" carries IFF_LOOPBACK, except under the shim.
    probe = """
import ctypes
class ifaddrs(ctypes.Structure):
    pass
ifaddrs._fields_ = [("next", ctypes.POINTER(ifaddrs)), ("name", ctypes.c_char_p), ("flags", ctypes.c_uint)]
libc = ctypes.CDLL(None)  # the global scope, where a preloaded symbol comes first, as for Janus
head = ctypes.POINTER(ifaddrs)()
assert libc.getifaddrs(ctypes.byref(head)) == 0
node, flags = head, set()
while node:
    if node.contents.name == b"lo":
        flags.add(bool(node.contents.flags & 0x8))  # IFF_LOOPBACK
    node = node.contents.next
print(sorted(flags))
"""
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    shimmed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             env={**os.environ, "LD_PRELOAD": str(shim)})
    assert plain.stdout.strip() == "[True]" and shimmed.stdout.strip() == "[False]"


def test_memory_per_call_is_not_moved_by_library_pages_the_clients_come_to_share() -> None:
    """The idle server's USS counts library pages only it maps; once the clients map the same
    files, those pages are shared and leave its USS: a fixed offset that shrinks the USS figure
    per call the fewer the calls. The anon figure counts what the server allocated."""
    from bench.procfs import Memory
    from bench.report import call_figures

    summary = {"per_subscriber": [{"ok": True}] * 20, "server_cpu_seconds_per_second": 0.1}
    idle = Memory(rss_kb=100_000, pss_kb=90_000, uss_kb=70_000, processes=1, anon_kb=60_000)
    # 10 calls at 900 KiB each; 1,500 KiB of library pages turned shared meanwhile
    loaded = Memory(rss_kb=109_000, pss_kb=98_000, uss_kb=70_000 + 9_000 - 1_500, processes=1,
                    anon_kb=69_000)
    figures = call_figures(10, summary, idle, loaded, 0.0, [1.0])
    assert figures["memory_per_call_kb"]["anon"] == 900
    assert figures["memory_per_call_kb"]["uss"] == 750
    assert figures["memory_kb"]["loaded"]["anon"] == 69_000

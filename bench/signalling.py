"""``expertcall bench signalling``: pairing latency and throughput, and memory per idle socket.

The server runs as it does in production (``python -m signalling.app.cli serve``, one process per
node; two nodes share a Redis under a fresh key prefix). Client worker processes (uvloop, aiohttp)
drive it over real WebSockets on 127.0.0.1:

- idle (``--idle K``): K clients connect, ``hello`` and then only keep alive; the servers' RSS
  before and after gives the memory one open connection costs.
- pairs (``--pairs N --rounds R``): N experts and N clients connect and ``hello``, experts set
  presence online, then each pair runs R rounds of client ``help.request`` -> expert ``ring`` ->
  ``help.accept`` -> client ``session.state accepted`` -> client ``session.end``. With two nodes
  each pair's expert and client sit on different nodes, so every pairing crosses Redis.

Each pair's two sockets live in one worker process, so both ends of a latency share a clock.
Experts are registered through ``PUT /api/experts/{id}`` on every node (each node keeps its own
profile store). Figures: latency p50/p99, pairings per second, the servers' CPU seconds per second
and RSS (read from /proc), and every error by code.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import click

from . import redis_client
from .procfs import process_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
# A pair sends two messages a round, far above the default 20 a second per socket once rounds take
# a few milliseconds, and every simulated user connects from 127.0.0.1: the bench measures the
# server's pairing path and memory, not its flood and per-address limits.
SERVER_ENV = {
    "EXPERTCALL_MAX_MESSAGES_PER_SECOND": "100000",
    "EXPERTCALL_WS_MAX_CONNECTIONS": "1000000",
    "EXPERTCALL_WS_MAX_CONNECTIONS_PER_ADDRESS": "1000000",
    "EXPERTCALL_WS_MAX_UNAUTHENTICATED_PER_ADDRESS": "1000000",
}
WAIT_SECONDS = 30.0  # any one expected message (the server's own ring timeout is 30 s)
CONNECT_CONCURRENCY = 64  # handshakes in flight per worker: a burst, not a SYN flood
IDLE_SETTLE_SECONDS = 2.0


# --- the servers ------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB: the resident set now, and its peak."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def start_nodes(count: int, workdir: Path, secret: str, redis_url: str, prefix: str) -> list[Node]:
    nodes: list[Node] = []
    try:
        for i in range(count):
            port = free_port()
            command = [sys.executable, "-m", "signalling.app.cli", "serve", "--port", str(port),
                       "--data-dir", str(workdir / f"node{i}"), "--no-demo"]
            # The secret in the environment, not in argv, where every user's ps shows it.
            env = {**os.environ, **SERVER_ENV, "PYTHONPATH": str(ROOT), "EXPERTCALL_NODE_ID": f"bench-node{i}",
                   "EXPERTCALL_SECRET": secret}
            if redis_url:
                command += ["--redis", redis_url]
                env["EXPERTCALL_REDIS_PREFIX"] = prefix
            log_path = workdir / f"node{i}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            nodes.append(Node(f"node{i}", f"http://127.0.0.1:{port}", process, log_path))
        asyncio.run(_wait_ready(nodes))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


async def _wait_ready(nodes: list[Node]) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        for node in nodes:
            while True:
                if node.process.poll() is not None:
                    raise click.ClickException(f"{node.name} exited:\n{node.log_tail()}")
                if time.monotonic() > deadline:
                    raise click.ClickException(f"{node.name} was not ready within 60 s:\n{node.log_tail()}")
                try:
                    async with http.get(f"{node.url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)


async def register_experts(urls: list[str], admin_token: str, expert_ids: list[str],
                           price: dict[str, Any] | None = None) -> None:
    """Give every expert a profile on every node (at ``urls``): signalling only pairs clients with
    known experts. ``price`` as in the profile (free when left out)."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:

        async def put(url: str, expert_id: str) -> None:
            body: dict[str, Any] = {"display_name": f"Bench expert {expert_id}", "skills": ["bench"]}
            if price is not None:
                body["price"] = price
            async with limit, http.put(f"{url}/api/experts/{expert_id}", json=body, headers=headers) as response:
                if response.status not in (200, 201):
                    raise click.ClickException(f"{url}: PUT /api/experts/{expert_id}: {response.status} "
                                               f"{await response.text()}")

        await asyncio.gather(*(put(url, e) for url in urls for e in expert_ids))


def delete_redis_prefix(redis_url: str, prefix: str) -> None:
    client = redis_client.connect_sync(redis_url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


# --- the client side (runs in the worker processes) -------------------------------------------


class BenchError(Exception):
    """A step failed; ``code`` is what the report counts (a protocol error code, or ours)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Socket:
    """One signalling WebSocket: a reader stamping each message with its arrival time, a keepalive."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: asyncio.Queue[tuple[float, dict[str, Any]] | None] = asyncio.Queue()
        # Messages the server sends unasked (a server media.offer), by type: handled as they come
        # rather than queued, where an ``expect`` for something else would pass them over.
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.next_id = 0
        self.tasks = [asyncio.create_task(self._read())]

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                handler = self.handlers.get(data.get("type"))
                if handler is not None:
                    handler(data)
                else:
                    self.inbox.put_nowait((time.perf_counter(), data))
        self.inbox.put_nowait(None)

    async def _keepalive(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.send("ping")

    async def send(self, type_: str, **fields: Any) -> int:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"v": 1, "type": type_, "id": self.next_id, **fields}))
        return self.next_id

    async def expect(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> tuple[float, dict[str, Any]]:
        """The next message ``wanted`` accepts (others are passed over); an error raises its code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while True:
            try:
                item = await asyncio.wait_for(self.inbox.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BenchError(f"timeout:{what}") from None
            if item is None:
                raise BenchError(f"closed:{self.ws.close_code}")
            at, msg = item
            if msg.get("type") == "error":
                raise BenchError(str(msg.get("code")))
            if wanted(msg):
                return at, msg

    async def hello(self, token: str) -> None:
        ref = await self.send("hello", token=token, client={"name": "bench", "version": "1"})
        _, welcome = await self.expect(lambda m: m.get("type") == "welcome" and m.get("ref") == ref, "welcome")
        # Keep alive at the announced interval, as a real client does (and as idle sockets cost).
        self.tasks.append(asyncio.create_task(self._keepalive(float(welcome["ping_interval"]))))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.ws.close()


@dataclass
class WorkerResult:
    connect_hello: list[float] = field(default_factory=list)
    request_to_ring: list[float] = field(default_factory=list)
    ring_to_accepted: list[float] = field(default_factory=list)
    pairings: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def connect(http: aiohttp.ClientSession, url: str, token: str, limit: asyncio.Semaphore,
                  result: WorkerResult) -> Socket:
    async with limit:
        started = time.perf_counter()
        try:
            ws = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws", autoping=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BenchError(f"connect:{type(exc).__name__}") from None
        sock = Socket(ws)
        try:
            await sock.hello(token)
        except BaseException:
            await sock.close()
            raise
        result.connect_hello.append(time.perf_counter() - started)
        return sock


@dataclass(frozen=True)
class Job:
    """What one worker does: pairs ``first..first+count`` (or as many idle sockets)."""

    worker: int
    mode: str  # "pairs" | "idle"
    first: int
    count: int
    rounds: int
    urls: tuple[str, ...]
    secret: str


@dataclass(frozen=True)
class Shared:
    """Multiprocessing values the coordinator and the workers share (never the server under test)."""

    go: Any  # Event: the pairs start their rounds
    stop: Any  # Event: idle sockets close
    ready: Any  # Array('i'): sockets open, per worker (progress)
    settled: Any  # Array('i'): 1 once a worker has opened or failed every socket
    done: Any  # Array('i'): pairings done, per worker (progress)


def worker_main(job: Job, shared: Shared, results: Any) -> None:
    import uvloop

    try:
        result = uvloop.run(_worker(job, shared))
        results.put((job.worker, result))
    except BaseException as exc:  # noqa: BLE001  (the coordinator must hear of a dead worker, not wait for it)
        results.put((job.worker, f"{type(exc).__name__}: {exc}"))


async def _worker(job: Job, shared: Shared) -> WorkerResult:
    from signalling.auth.tokens import Role, TokenIssuer

    issuer = TokenIssuer(job.secret)
    result = WorkerResult()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    nodes = len(job.urls)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def open_socket(user: str, role: Role, node: int) -> Socket | None:
            token = issuer.mint(user, role, ttl=6 * 3600, name=user)
            try:
                sock = await connect(http, job.urls[node % nodes], token, limit, result)
            except BenchError as exc:
                result.errors[exc.code] += 1
                return None
            shared.ready[job.worker] += 1
            return sock

        async def wait(event: Any) -> None:
            while not event.is_set():
                await asyncio.sleep(0.05)

        if job.mode == "idle":
            socks = await asyncio.gather(*(open_socket(f"idle{i}", Role.CLIENT, i) for i in
                                           range(job.first, job.first + job.count)))
            shared.settled[job.worker] = 1
            await wait(shared.stop)
            await asyncio.gather(*(s.close() for s in socks if s is not None))
            return result

        async def open_pair(i: int) -> tuple[Socket, Socket] | None:
            # With two nodes the expert and the client of a pair are on different nodes.
            expert = await open_socket(f"e{i}", Role.EXPERT, i)
            if expert is None:
                return None
            try:
                ref = await expert.send("presence.set", status="online")
                await expert.expect(lambda m: m.get("type") == "presence" and m.get("ref") == ref, "presence")
            except BenchError as exc:
                result.errors[exc.code] += 1
                await expert.close()
                return None
            client = await open_socket(f"c{i}", Role.CLIENT, i + 1)
            if client is None:
                await expert.close()
                return None
            return expert, client

        pairs = await asyncio.gather(*(open_pair(i) for i in range(job.first, job.first + job.count)))
        shared.settled[job.worker] = 1
        await wait(shared.go)
        await asyncio.gather(*(run_pair(f"e{job.first + k}", pair, job.rounds, result, shared.done, job.worker)
                               for k, pair in enumerate(pairs) if pair is not None))
        await asyncio.gather(*(s.close() for pair in pairs if pair is not None for s in pair))
    return result


async def run_pair(expert_id: str, pair: tuple[Socket, Socket], rounds: int, result: WorkerResult,
                   done: Any, worker: int) -> None:
    try:
        for _ in range(rounds):
            await pairing(expert_id, *pair, result)
            done[worker] += 1
    except BenchError as exc:
        # The pair's state is unknown now: it stops here rather than pile up follow-on errors.
        result.errors[exc.code] += 1


async def pairing(expert_id: str, expert: Socket, client: Socket, result: WorkerResult) -> None:
    """One round: request, ring, accept, end; both ends' latencies on this process's clock."""
    sent = time.perf_counter()
    await client.send("help.request", expert_id=expert_id)

    async def expert_side() -> float:
        rung, ring = await expert.expect(lambda m: m.get("type") == "ring", "ring")
        ref = await expert.send("help.accept", session_id=ring["session"]["id"])
        await expert.expect(lambda m: m.get("ref") == ref and m.get("type") == "session.state", "accept reply")
        return rung

    def accepted(m: dict[str, Any]) -> bool:
        return m.get("type") == "session.state" and m["session"]["state"] == "accepted"

    rung, (accepted_at, state) = await asyncio.gather(expert_side(), client.expect(accepted, "accepted"))
    result.request_to_ring.append(rung - sent)
    result.ring_to_accepted.append(accepted_at - rung)
    session_id = state["session"]["id"]

    def ended(m: dict[str, Any]) -> bool:
        return m.get("type") == "session.state" and m["session"]["state"] == "ended" \
            and m["session"]["id"] == session_id

    # The expert is free again only once they hear the end: the next ring waits for that.
    ref = await client.send("session.end", session_id=session_id)
    await asyncio.gather(client.expect(lambda m: ended(m) and m.get("ref") == ref, "end reply"),
                         expert.expect(ended, "ended"))
    result.pairings += 1


# --- the coordinator ----------------------------------------------------------------------------


def latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)

    return {"count": len(ordered), "p50_ms": at(50), "p99_ms": at(99), "max_ms": round(ordered[-1] * 1000, 2)}


def _progress(text: str) -> None:
    click.echo(f"\r\033[K{text}", err=True, nl=False)


class Phase:
    """One set of worker processes and what they share with the coordinator."""

    def __init__(self, jobs: list[Job]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.jobs = jobs
        n = len(jobs)
        self.shared = Shared(go=ctx.Event(), stop=ctx.Event(), ready=ctx.Array("i", n),
                             settled=ctx.Array("i", n), done=ctx.Array("i", n))
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=worker_main, args=(job, self.shared, self.results), daemon=True)
                      for job in jobs]
        for p in self.procs:
            p.start()

    def wait_connected(self, label: str, expected: int) -> None:
        """Until every worker has opened (or failed to open) all its sockets."""
        while not all(self.shared.settled) and all(p.is_alive() for p in self.procs):
            _progress(f"{label}: {sum(self.shared.ready)}/{expected} sockets open")
            time.sleep(0.2)

    def collect(self, label: str, status: Callable[[], str]) -> list[WorkerResult]:
        """Every worker's result; ``status()`` is the progress line meanwhile (and once more at the end)."""
        out: dict[int, WorkerResult] = {}
        while len(out) < len(self.jobs):
            _progress(status())
            try:
                worker, result = self.results.get(timeout=0.5)
            except queue.Empty:  # check that nobody died silently
                dead = [p for p in self.procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise click.ClickException(f"a {label} worker died (exit code {dead[0].exitcode})") from None
                continue
            if isinstance(result, str):
                raise click.ClickException(f"a {label} worker failed: {result}")
            out[worker] = result
        _progress(status())
        for p in self.procs:
            p.join(10)
        return [out[w] for w in sorted(out)]


def split(total: int, workers: int) -> list[tuple[int, int]]:
    """(first, count) per worker, as even as can be; empty shares dropped."""
    shares = [(w * total // workers, (w + 1) * total // workers - w * total // workers) for w in range(workers)]
    return [(first, count) for first, count in shares if count]


def _cpu(nodes: list[Node]) -> float:
    return sum(process_cpu_seconds(n.pid) for n in nodes)


def _rss_mb(nodes: list[Node]) -> float:
    return round(sum(rss_kb(n.pid)[0] for n in nodes) / 1024, 1)


def run_idle(nodes: list[Node], secret: str, idle: int, hold: float, workers: int,
             errors: Counter[str]) -> dict[str, Any]:
    urls = tuple(n.url for n in nodes)
    before_kb = sum(rss_kb(n.pid)[0] for n in nodes)
    phase = Phase([Job(w, "idle", first, count, 0, urls, secret)
                   for w, (first, count) in enumerate(split(idle, workers))])
    phase.wait_connected("idle", idle)
    time.sleep(IDLE_SETTLE_SECONDS)
    open_sockets = sum(phase.shared.ready)
    cpu_before, started = _cpu(nodes), time.monotonic()
    time.sleep(hold)
    cpu = _cpu(nodes) - cpu_before
    window = time.monotonic() - started
    after_kb = sum(rss_kb(n.pid)[0] for n in nodes)
    phase.shared.stop.set()
    results = phase.collect("idle", lambda: f"idle: {open_sockets} sockets held {hold:g} s, closing")
    for r in results:
        errors.update(r.errors)
    return {
        "connections": open_sockets,
        "connect_hello_ms": latency([x for r in results for x in r.connect_hello]),
        "server_rss_before_mb": round(before_kb / 1024, 1),
        "server_rss_after_mb": round(after_kb / 1024, 1),
        "rss_per_connection_kb": round((after_kb - before_kb) / open_sockets, 2) if open_sockets else None,
        # Keepalive pings only (one per socket per ping_interval, 20 s): what holding sockets costs.
        "hold_seconds": round(window, 2),
        "server_cpu_seconds_per_second": round(cpu / window, 4),
    }


def run_pairs(nodes: list[Node], secret: str, pairs: int, rounds: int, workers: int,
              errors: Counter[str]) -> dict[str, Any]:
    urls = tuple(n.url for n in nodes)
    phase = Phase([Job(w, "pairs", first, count, rounds, urls, secret)
                   for w, (first, count) in enumerate(split(pairs, workers))])
    phase.wait_connected("pairs", 2 * pairs)
    cpu_before, started = _cpu(nodes), time.monotonic()
    phase.shared.go.set()
    target = pairs * rounds
    results = phase.collect("pairs", lambda: f"pairs: {pairs} pairs, pairings: {sum(phase.shared.done)}/{target}")
    window = time.monotonic() - started
    cpu = _cpu(nodes) - cpu_before
    pairings = sum(r.pairings for r in results)
    for r in results:
        errors.update(r.errors)
    return {
        "pairs": pairs,
        "rounds": rounds,
        "pairings": pairings,
        "pairings_expected": target,
        "window_seconds": round(window, 3),
        "pairings_per_second": round(pairings / window, 1),
        "connect_hello_ms": latency([x for r in results for x in r.connect_hello]),
        "request_to_ring_ms": latency([x for r in results for x in r.request_to_ring]),
        "ring_to_accepted_ms": latency([x for r in results for x in r.ring_to_accepted]),
        "server_cpu_seconds_per_second": round(cpu / window, 4),
        "server_rss_mb": _rss_mb(nodes),
    }


def run(*, pairs: int, rounds: int, idle: int, idle_hold: float, backend: str, nodes: int, workers: int,
        redis_url: str) -> dict[str, Any]:
    from signalling.auth.tokens import Role, TokenIssuer

    if nodes > 1 and backend != "redis":
        raise click.UsageError("--nodes 2 needs --backend redis (nodes share state through Redis)")
    secret = secrets.token_urlsafe(36)  # 48 characters
    prefix = f"bench-signalling-{uuid.uuid4().hex}"
    workdir = Path(tempfile.mkdtemp(prefix="expertcall-bench-signalling-"))
    url = redis_url if backend == "redis" else ""
    load_before = os.getloadavg()
    errors: Counter[str] = Counter()
    servers = start_nodes(nodes, workdir, secret, url, prefix)
    try:
        admin = TokenIssuer(secret).mint("bench", Role.ADMIN, ttl=6 * 3600, name="signalling bench")
        asyncio.run(register_experts([n.url for n in servers], admin, [f"e{i}" for i in range(pairs)]))
        started_rss = _rss_mb(servers)
        report: dict[str, Any] = {
            "config": {"pairs": pairs, "rounds": rounds, "idle": idle, "idle_hold": idle_hold,
                       "backend": backend, "nodes": nodes,
                       "workers": workers, "server_env": SERVER_ENV, "cpu_count": os.cpu_count()},
            "server_rss_at_start_mb": started_rss,
        }
        report["idle"] = run_idle(servers, secret, idle, idle_hold, workers, errors) if idle else None
        report["pairing"] = run_pairs(servers, secret, pairs, rounds, workers, errors) if pairs else None
        report["servers"] = [{"node": n.name, "pid": n.pid, "rss_mb": round(rss_kb(n.pid)[0] / 1024, 1),
                              "rss_peak_mb": round(rss_kb(n.pid)[1] / 1024, 1),
                              "cpu_seconds": round(process_cpu_seconds(n.pid), 2)} for n in servers]
        for n in servers:
            if n.process.poll() is not None:
                errors[f"server_exited:{n.name}"] += 1
    finally:
        click.echo("", err=True)
        for n in servers:
            n.stop()
        if url:
            delete_redis_prefix(url, prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    report["errors"] = dict(sorted(errors.items()))
    report["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    return report


@click.command()
@click.option("--pairs", type=click.IntRange(0), default=100, show_default=True, help="Expert/client pairs.")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Pairings per pair.")
@click.option("--idle", type=click.IntRange(0), default=0, show_default=True,
              help="Sockets that only keep alive (memory per connection).")
@click.option("--idle-hold", type=click.FloatRange(0.5), default=25.0, show_default=True,
              help="Seconds the idle sockets are held and measured (a ping interval is 20 s).")
@click.option("--backend", type=click.Choice(["memory", "redis"]), default="memory", show_default=True)
@click.option("--nodes", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Server processes (2 needs --backend redis); a pair's two ends sit on different nodes.")
@click.option("--redis", "redis_url", default=REDIS_URL, show_default=True, help="Redis for --backend redis.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Client processes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report here.")
def signalling(pairs: int, rounds: int, idle: int, idle_hold: float, backend: str, nodes: int, redis_url: str,
               workers: int, json_path: Path | None) -> None:
    """Pairing latency and throughput over /ws, and server memory per idle connection."""
    if not pairs and not idle:
        raise click.UsageError("nothing to do: give --pairs or --idle")
    report = run(pairs=pairs, rounds=rounds, idle=idle, idle_hold=idle_hold, backend=backend, nodes=nodes,
                 workers=workers, redis_url=redis_url)
    text = json.dumps(report, indent=2)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    click.echo(text)

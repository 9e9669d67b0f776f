"""Janus (Debian's ``janus`` package) as the media bench's reference SFU for two-party calls.

``start_janus`` runs Janus with a configuration written for the bench: the VideoRoom plugin and
the WebSocket transport only (on 127.0.0.1), no event handlers, loggers or admin API, and ICE
on 127.0.0.1 alone. Janus leaves loopback interfaces out of its ICE candidates, so it runs with
``janus_loopback.c`` preloaded (LD_PRELOAD), which hides the loopback flag from its
``getifaddrs()``; ``ice_enforce_list`` then keeps 127.0.0.1 the only address it gathers. Why this
and not network namespaces: docs/bench.md.

``JanusSession`` is a light client of the Janus API over that WebSocket (what janus.js does for a
page): a session, plugin handles, requests matched to their answers by transaction, and a
keepalive. ``bench/call_workers.py`` uses it to run calls as a VideoRoom application would: one
room per call, each participant a publisher handle and a subscriber handle to the other's feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import click

VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_SECONDS = 25.0  # as janus.js; Janus drops a session silent for session_timeout (60 s)
REQUEST_TIMEOUT = 30.0
SHIM_SOURCE = Path(__file__).with_name("janus_loopback.c")


class JanusError(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code  # the VideoRoom's error_code, 0 for anything else


NO_SUCH_FEED = 428  # JANUS_VIDEOROOM_ERROR_NO_SUCH_FEED: the publisher is not active (yet)


def janus_binary() -> str:
    found = shutil.which("janus")
    if found is None:
        raise click.ClickException("--reference janus needs Janus: apt-get install janus")
    return found


def janus_library_dir() -> Path:
    """Where the Debian package put the plugins and transports (multiarch path)."""
    for plugin in sorted(Path("/usr/lib").glob("*/janus/plugins/libjanus_videoroom.so")) + \
            sorted(Path("/usr/lib/janus/plugins").glob("libjanus_videoroom.so")):
        return plugin.parent.parent
    raise click.ClickException("Janus is installed without its VideoRoom plugin: apt-get install janus")


def loopback_shim(cache_dir: Path | None = None) -> Path:
    """The LD_PRELOAD shim, compiled once per source version with the system's C compiler."""
    source = SHIM_SOURCE.read_bytes()
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "expertcall-bench"
    target = cache / f"janus_loopback-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise click.ClickException("the Janus reference needs a C compiler for its loopback shim: "
                                   "apt-get install gcc libc6-dev")
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{secrets.token_hex(4)}.tmp")
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(SHIM_SOURCE), "-ldl"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"compiling {SHIM_SOURCE.name} failed:\n{result.stderr}")
    partial.replace(target)
    return target


def write_config(directory: Path, ws_port: int, library: Path, event_loops: int = 0) -> Path:
    """A configuration folder that loads the VideoRoom plugin and the WebSocket transport only.
    ``event_loops`` 0 keeps Janus's default, a thread and loop per handle; N shares N loops."""
    for sub in ("plugins", "transports", "none"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "plugins" / "libjanus_videoroom.so").symlink_to(library / "plugins" / "libjanus_videoroom.so")
    (directory / "transports" / "libjanus_websockets.so").symlink_to(
        library / "transports" / "libjanus_websockets.so")
    main = directory / "janus.jcfg"
    loops = f"\n\tevent_loops = {event_loops}" if event_loops else ""
    main.write_text(f"""general: {{
	configs_folder = "{directory}"
	plugins_folder = "{directory / 'plugins'}"
	transports_folder = "{directory / 'transports'}"
	events_folder = "{directory / 'none'}"
	loggers_folder = "{directory / 'none'}"
	debug_level = 4
	interface = "127.0.0.1"{loops}
	protected_folders = ["/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr", "/var"]
}}
media: {{
}}
nat: {{
	ice_enforce_list = "127.0.0.1"
}}
""")
    (directory / "janus.transport.websockets.jcfg").write_text(f"""general: {{
	json = "plain"
	ws = true
	ws_port = {ws_port}
	ws_ip = "127.0.0.1"
	wss = false
}}
admin: {{
	admin_ws = false
	admin_wss = false
}}
""")
    (directory / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return main


def command(config: Path, cpus: str = "") -> list[str]:
    base = [janus_binary(), "--config", str(config), "--configs-folder", str(config.parent), "--disable-colors"]
    return (["taskset", "--cpu-list", cpus] if cpus else []) + base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_janus(directory: Path, log_path: Path, nice: int = 0, cpus: str = "",
                event_loops: int = 0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start Janus; returns its WebSocket URL and process once it accepts connections."""
    port = _free_port()
    config = write_config(directory, port, janus_library_dir(), event_loops)
    env = {**os.environ, "LD_PRELOAD": str(loopback_shim())}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command(config, cpus), env=env, stdout=log, stderr=subprocess.STDOUT)
    if nice:
        os.setpriority(os.PRIO_PROCESS, process.pid, nice)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"Janus exited: see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return f"ws://127.0.0.1:{port}", process
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise click.ClickException(f"Janus did not listen within 30 s: see {log_path}")


class JanusSession:
    """One Janus API session on its own WebSocket, as one browser tab holds one."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.id = 0
        self.hangups: list[dict[str, Any]] = []  # "hangup" events: a PeerConnection Janus closed
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._until_event: set[str] = set()
        self._tasks = [asyncio.ensure_future(self._read())]

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str) -> JanusSession:
        ws = await http.ws_connect(url, protocols=("janus-protocol",), autoping=True)
        session = cls(ws)
        try:
            session.id = (await session._call({"janus": "create"}))["data"]["id"]
        except BaseException:
            await session.close()
            raise
        session._tasks.append(asyncio.ensure_future(session._keepalive()))
        return session

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        reply = await self._call({"janus": "attach", "plugin": plugin, "session_id": self.id})
        return int(reply["data"]["id"])

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (``create``): the plugin's answer."""
        reply = await self._call({"janus": "message", "session_id": self.id, "handle_id": handle, "body": body})
        return _plugin_data(reply)

    async def message(self, handle: int, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request (``join``, ``publish``, ``start``): the event that
        answers it, and its JSEP if any."""
        payload: dict[str, Any] = {"janus": "message", "session_id": self.id, "handle_id": handle, "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        reply = await self._call(payload, until_event=True)
        return _plugin_data(reply), reply.get("jsep")

    async def end_of_candidates(self, handle: int) -> None:
        """Our candidates were all in the SDP (aiortc does not trickle)."""
        await self._send({"janus": "trickle", "session_id": self.id, "handle_id": handle,
                          "candidate": {"completed": True}, "transaction": secrets.token_hex(6)})

    async def close(self) -> None:
        if self.id and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call({"janus": "destroy", "session_id": self.id}), 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()

    async def _call(self, payload: dict[str, Any], until_event: bool = False) -> dict[str, Any]:
        transaction = secrets.token_hex(6)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        if until_event:
            self._until_event.add(transaction)
        try:
            await self._send({**payload, "transaction": transaction})
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError:
            raise JanusError(f"no answer to {payload.get('janus')} {payload.get('body', '')} "
                             f"within {REQUEST_TIMEOUT:.0f} s") from None
        finally:
            self._pending.pop(transaction, None)
            self._until_event.discard(transaction)
        if reply.get("janus") == "error":
            raise JanusError(f"{payload.get('janus')}: {reply['error']}")
        return reply

    async def _send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(payload))

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("janus")
            if kind == "hangup":
                self.hangups.append(data)
            future = self._pending.get(data.get("transaction", ""))
            if future is None or future.done():
                continue
            if kind == "ack" and data["transaction"] in self._until_event:
                continue  # the event follows
            future.set_result(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(JanusError(f"the Janus socket closed ({self.ws.close_code})"))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            await self._send({"janus": "keepalive", "session_id": self.id, "transaction": secrets.token_hex(6)})


def _plugin_data(reply: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
    if "error_code" in data:
        raise JanusError(f"VideoRoom error {data['error_code']}: {data.get('error')}", int(data["error_code"]))
    return data

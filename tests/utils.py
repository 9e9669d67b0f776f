"""Test helpers: a protocol-speaking WebSocket peer, a fake media plane, and an app factory."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Callable

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from sfu.api import (
    Answer,
    EventHandler,
    MediaError,
    MediaState,
    Message,
    Offer,
    Ok,
    RecordingStarted,
    RecoverRecordings,
    StartRecording,
)
from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS
from signalling.calls.directory import ExpertRef, MemoryExpertDirectory
from signalling.calls.node import EXPERT_DIRECTORY
from signalling.core.protocol import server_errors
from signalling.core.settings import Settings

EXPERTS = [
    ExpertRef("erin", "Erin Expert", ("plumbing", "python")),
    ExpertRef("ezra", "Ezra Expert", ("python",)),
    ExpertRef("emma", "Emma Expert", ("gardening",)),
]


class FakePlane:
    """A MediaPlane that answers every offer and emits the events a test tells it to."""

    def __init__(self) -> None:
        self.requests: list[Message] = []
        self.handlers: list[EventHandler] = []
        self.refuse: MediaError | None = None

    async def request(self, message: Message) -> Message:
        if isinstance(message, RecoverRecordings):
            return Ok()  # asked once at every start-up: not one of the requests tests follow
        self.requests.append(message)
        if self.refuse is not None:
            raise self.refuse
        if isinstance(message, Offer):
            return Answer(sdp=f"answer-to:{message.participant_id}:{message.transport}")
        if isinstance(message, StartRecording):
            return RecordingStarted(message.room_id, f"rec{len(self.requests)}", 1_700_000_000.0)
        return Ok()

    def on_event(self, handler: EventHandler) -> None:
        self.handlers.append(handler)

    def emit(self, event: Message) -> None:
        for handler in self.handlers:
            result = handler(event)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)

    def flowing(self, room_id: str, participant_id: str, flowing: bool) -> None:
        self.emit(MediaState(room_id, participant_id, flowing, at=0.0))

    async def close(self) -> None:
        return None

    def kinds(self) -> list[str]:
        return [m.kind for m in self.requests]


def build_app(settings: Settings, plane: FakePlane | None = None) -> web.Application:
    # Signalling tests drive media through the fake plane; without one the node runs media-less.
    app = create_app(settings, media=lambda _: plane)
    app[EXPERT_DIRECTORY] = MemoryExpertDirectory(EXPERTS)
    return app


class Peer:
    """One user's socket. Every message received is checked against the server->client schemas."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.backlog: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def join(cls, server: TestClient, user: str, role: str, name: str | None = None, minor: bool = False,
                   **hello: Any) -> "Peer":
        token = server.app[TOKENS].mint(user, role, name=name, minor=minor)
        peer = cls(await server.ws_connect("/ws"))
        peer.welcome = await peer.request("hello", token=token, **hello)
        assert peer.welcome["type"] == "welcome", peer.welcome
        return peer

    async def send(self, type_: str, **fields: Any) -> int:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"v": 1, "type": type_, "id": msg_id, **fields}))
        return msg_id

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await self.ws.receive(timeout=timeout)
        if frame.type is not WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {frame.type} {self.ws.close_code} {frame.extra}")
        msg = json.loads(frame.data)
        assert server_errors(msg) == [], (msg, server_errors(msg))
        return msg

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The next message of ``type_`` whose fields (or session fields) match; others wait in the backlog."""

        def fits(msg: dict[str, Any]) -> bool:
            if msg["type"] != type_:
                return False
            for key, value in match.items():
                have = msg.get(key, msg.get("session", {}).get(key) if isinstance(msg.get("session"), dict) else None)
                if have != value:
                    return False
            return True

        for i, msg in enumerate(self.backlog):
            if fits(msg):
                return self.backlog.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv(timeout)
                if fits(msg):
                    return msg
                self.backlog.append(msg)

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send and return the reply (the first message whose ref is this request's id)."""
        msg_id = await self.send(type_, **fields)
        for i, msg in enumerate(self.backlog):
            if msg.get("ref") == msg_id:
                return self.backlog.pop(i)
        while True:
            msg = await self.recv()
            if msg.get("ref") == msg_id:
                return msg
            self.backlog.append(msg)

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes the socket; its close code."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.receive()
                if frame.type is WSMsgType.CLOSE:
                    # The code the server sent. (aiohttp's client turns its own close_code into 1006
                    # when the server drops the transport before the client's reply, which aiohttp's
                    # server does when a socket is closed from another task.)
                    return int(frame.data)
                if frame.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                    return self.ws.close_code
                self.backlog.append(json.loads(frame.data))

    def types(self) -> list[str]:
        return [m["type"] for m in self.backlog]


def kill(peer: Peer) -> None:
    """Drop a socket without a closing handshake, as a lost network does."""
    connection = peer.ws._conn  # aiohttp keeps no public handle on the transport
    assert connection is not None and connection.transport is not None
    connection.transport.abort()


async def shut_down(server: TestClient, *peers: Peer) -> list[int | None]:
    """Stop the server while the peers read, as live clients do; their close codes."""
    stopping = asyncio.ensure_future(server.server.close())
    codes = await asyncio.gather(*(peer.closed() for peer in peers))
    await stopping
    return list(codes)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (for effects that travel between nodes with no reply to await)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@asynccontextmanager
async def frozen_redis() -> AsyncIterator[str]:
    """The URL of a "Redis" that accepts connections and never answers (a paused or partitioned
    server: no reset, no reply)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()
        for writer in held:
            writer.close()


async def ends_within(seconds: float, awaitable: Awaitable[Any]) -> tuple[bool, BaseException | None]:
    """Whether ``awaitable`` ended within ``seconds`` (and its exception): asyncio.wait cancels
    nothing, so a wait that would hang is not ended by the check itself."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False, None
    return True, None if task.cancelled() else task.exception()

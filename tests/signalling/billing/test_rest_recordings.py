"""Recordings over REST: participants and admins only, range requests, no way to another file;
the index and its events follow the media plane's; retention and admin deletion are events."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import jwt

from sfu.api import RecordingFile, RecordingStopped
from signalling.auth.tokens import TOKENS
from signalling.billing.recording_archive import RECORDING_STORE
from signalling.billing.service import BILLING_STORE
from signalling.core import keys
from signalling.billing.recordings import RecordingRow

from ..calls.test_recording import paired
from ...utils import FakePlane, Peer, build_app


def auth(client: Any, user: str, role: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + client.app[TOKENS].mint(user, role)}


async def recorded(client: Any, plane: FakePlane) -> tuple[Peer, Peer, str, str, bytes]:
    """A session recorded with both consents, whose media plane reported one file."""
    expert, alice, sid = await paired(client)
    await expert.request("recording.request", session_id=sid)
    on = await alice.request("recording.consent", session_id=sid, accept=True)
    rid = on["recording"]["recording_id"]
    content = os.urandom(50_000)
    folder = client.app[keys.SETTINGS].data_dir / "recordings" / rid
    folder.mkdir(parents=True)
    (folder / "001.webm").write_bytes(content)
    plane.emit(RecordingFile(sid, rid, "alice", f"{rid}/001.webm", len(content), 4.5,
                             hashlib.sha256(content).hexdigest(), 1_700_000_000.0))
    for _ in range(100):
        if await client.app[RECORDING_STORE].index.get(f"{rid}-001") is not None:
            break
        await asyncio.sleep(0.02)
    return expert, alice, sid, rid, content


async def test_participants_list_and_download_with_ranges(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid, rid, content = await recorded(client, plane)
    listed = await client.get(f"/api/sessions/{sid}/recordings", headers=auth(client, "erin", "expert"))
    assert listed.status == 200
    (item,) = (await listed.json())["recordings"]
    assert (item["id"], item["participant_id"], item["size"]) == (f"{rid}-001", "alice", len(content))
    assert item["sha256"] == hashlib.sha256(content).hexdigest() and "file" not in item
    whole = await client.get(f"/api/recordings/{rid}-001/file", headers=auth(client, "alice", "client"))
    assert whole.status == 200 and await whole.read() == content
    assert whole.headers["Content-Type"] == "video/webm"
    part = await client.get(f"/api/recordings/{rid}-001/file",
                            headers={**auth(client, "erin", "expert"), "Range": "bytes=1000-1999"})
    assert part.status == 206 and await part.read() == content[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(content)}"
    beyond = await client.get(f"/api/recordings/{rid}-001/file",
                              headers={**auth(client, "erin", "expert"), "Range": "bytes=999999-"})
    assert beyond.status == 416
    admin = await client.get(f"/api/recordings/{rid}-001", headers=auth(client, "root", "admin"))
    assert admin.status == 200 and (await admin.json())["session_id"] == sid


async def test_a_file_on_another_node_is_named(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    await client.app[RECORDING_STORE].index.add(RecordingRow(
        id="elsewhere-001", session_id=sid, recording_id="elsewhere", participant_id="alice",
        expert_id="erin", client_id="alice", node="node-b", file="elsewhere/001.webm", size=1,
        duration=1.0, sha256="00" * 32, started_at=1.0, ready_at=2.0), [])
    answer = await client.get("/api/recordings/elsewhere-001/file", headers=auth(client, "alice", "client"))
    assert answer.status == 409
    body = await answer.json()
    assert body["error"]["code"] == "recording_on_other_node" and "node-b" in body["error"]["message"]


async def test_everyone_else_is_refused(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid, rid, content = await recorded(client, plane)
    stranger = auth(client, "bob", "client")
    assert (await client.get(f"/api/sessions/{sid}/recordings", headers=stranger)).status == 403
    assert (await client.get(f"/api/recordings/{rid}-001/file", headers=stranger)).status == 403
    assert (await client.get(f"/api/recordings/{rid}-001", headers=stranger)).status == 403
    assert (await client.get("/api/sessions/nosuchsession/recordings", headers=stranger)).status == 404
    assert (await client.get(f"/api/recordings/{rid}-002/file", headers=auth(client, "alice", "client"))).status == 404
    assert (await client.get(f"/api/recordings/{rid}-001/file")).status == 401
    now = int(time.time())
    expired = jwt.encode({"sub": "alice", "role": "client", "iat": now - 3600, "exp": now - 120, "jti": "x"},
                         settings.resolve_secret(), "HS256")
    late = await client.get(f"/api/recordings/{rid}-001/file", headers={"Authorization": f"Bearer {expired}"})
    assert late.status == 401
    alice_auth = auth(client, "alice", "client")
    for name in ("..%2F..%2Fexpertcall.db", "%2e%2e", f"{rid}%2F001.webm", "..", f"{rid}-001%00"):
        response = await client.get(f"/api/recordings/{name}/file", headers=alice_auth)
        assert response.status == 404, name
    deleted = await client.delete(f"/api/recordings/{rid}-001", headers=alice_auth)
    assert deleted.status == 403  # participants may not delete


async def test_events_deletion_and_retention(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid, rid, content = await recorded(client, plane)
    plane.emit(RecordingStopped(sid, rid, "stopped_by:alice"))
    archive = client.app[RECORDING_STORE]
    store = client.app[BILLING_STORE]
    for _ in range(100):
        if any(r.id == f"{rid}:stopped" for r in await store.events_after(0, 100)):
            break
        await asyncio.sleep(0.02)
    events = {r.id: r.event for r in await store.events_after(0, 100) if "recording" in r.type}
    assert events[f"{rid}:started"]["data"]["client_id"] == "alice"
    ready = events[f"{rid}-001:ready"]["data"]
    assert (ready["size"], ready["duration"], ready["sha256"]) == (
        len(content), 4.5, hashlib.sha256(content).hexdigest())
    assert events[f"{rid}:stopped"]["data"]["reason"] == "stopped_by:alice"

    # a second file, made long ago: the retention period deletes it
    folder = settings.data_dir / "recordings" / rid
    (folder / "002.webm").write_bytes(b"old")
    plane.emit(RecordingFile(sid, rid, "erin", f"{rid}/002.webm", 3, 1.0, "cd" * 32, 1.0))
    for _ in range(100):
        if await archive.index.get(f"{rid}-002") is not None:
            break
        await asyncio.sleep(0.02)
    archive.clock = lambda: time.time() + (settings.recording_retention_days + 1) * 86400
    assert await archive.sweep() == 2
    assert not (folder / "002.webm").exists() and not folder.exists()
    deleted = {r.id: r.event for r in await store.events_after(0, 100) if r.type.endswith("deleted")}
    assert deleted[f"{rid}-002:deleted"]["data"]["reason"] == "retention"

    # and an admin deletes what is left of another recording
    expert2, alice2 = expert, alice
    await expert2.request("recording.stop", session_id=sid)
    await expert2.request("recording.request", session_id=sid)
    on = await alice2.request("recording.consent", session_id=sid, accept=True)
    rid2 = on["recording"]["recording_id"]
    (settings.data_dir / "recordings" / rid2).mkdir()
    (settings.data_dir / "recordings" / rid2 / "001.webm").write_bytes(b"x" * 10)
    plane.emit(RecordingFile(sid, rid2, "alice", f"{rid2}/001.webm", 10, 1.0, "ef" * 32, 2.0))
    for _ in range(100):
        if await archive.index.get(f"{rid2}-001") is not None:
            break
        await asyncio.sleep(0.02)
    archive.clock = time.time
    gone = await client.delete(f"/api/recordings/{rid2}-001", headers=auth(client, "root", "admin"))
    assert gone.status == 204
    assert not (settings.data_dir / "recordings" / rid2).exists()
    assert (await client.get(f"/api/recordings/{rid2}-001", headers=auth(client, "root", "admin"))).status == 404
    by_admin = [r.event for r in await store.events_after(0, 100) if r.id == f"{rid2}-001:deleted"]
    assert by_admin[0]["data"]["reason"] == "admin" and by_admin[0]["data"]["by"] == "root"

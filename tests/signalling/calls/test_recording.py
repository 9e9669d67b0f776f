"""Recording consent over /ws: both participants agree or nothing is recorded; either stops it;
a minor is never recorded; both always know the state."""

from __future__ import annotations

from typing import Any

import pytest

from sfu.api import RecordingFailed, RecordingStopped, StartRecording, StopRecording

from ...utils import FakePlane, Peer, build_app


@pytest.fixture
def plane() -> FakePlane:
    return FakePlane()


async def paired(client: Any, minor: bool = False) -> tuple[Peer, Peer, str]:
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client", minor=minor)
    session_id = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=session_id)
    return expert, alice, session_id


async def state(peer: Peer, reason: str) -> dict[str, Any]:
    """The next recording.state with this reason (earlier ones skipped)."""
    while True:
        msg = await peer.expect("recording.state")
        if msg["recording"]["reason"] == reason:
            return msg


def starts(plane: FakePlane) -> list[Any]:
    return [m for m in plane.requests if isinstance(m, StartRecording)]


async def test_both_consent_then_either_stops(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)

    asked = await expert.request("recording.request", session_id=sid)
    assert asked["type"] == "recording.state"
    assert asked["recording"] | {"since": 0} == {
        "state": "requested", "requested_by": "erin", "consented": ["erin"], "reason": "requested",
        "by": "erin", "since": 0}
    told = await alice.expect("recording.state")
    assert told["recording"]["state"] == "requested" and "ref" not in told
    assert starts(plane) == []  # one consent is not enough

    on = await alice.request("recording.consent", session_id=sid, accept=True)
    assert on["recording"]["state"] == "on"
    assert on["recording"]["consented"] == ["erin", "alice"]
    assert on["recording"]["recording_id"].startswith("rec")
    assert [m.room_id for m in starts(plane)] == [sid]
    assert (await expert.expect("recording.state"))["recording"]["state"] == "on"

    # the snapshot on a new connection says so too
    again = await Peer.join(client, "alice", "client")
    assert again.welcome["session"]["recording"]["state"] == "on"

    off = await again.request("recording.stop", session_id=sid)
    assert off["recording"] | {"since": 0} == {
        "state": "off", "consented": [], "reason": "stopped", "by": "alice", "since": 0}
    assert isinstance(plane.requests[-1], StopRecording) and plane.requests[-1].room_id == sid
    assert (await expert.expect("recording.state"))["recording"]["state"] == "off"


async def test_no_recording_without_both_consents(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    nothing = await alice.request("recording.consent", session_id=sid, accept=True)
    assert nothing["code"] == "invalid_state"
    await expert.request("recording.request", session_id=sid)
    twice = await expert.request("recording.consent", session_id=sid, accept=True)
    assert twice["code"] == "invalid_state"
    again = await expert.request("recording.request", session_id=sid)
    assert again["code"] == "invalid_state"
    declined = await alice.request("recording.consent", session_id=sid, accept=False)
    assert declined["recording"]["state"] == "off" and declined["recording"]["reason"] == "declined"
    assert (await expert.expect("recording.state"))["recording"]["reason"] == "declined"
    assert starts(plane) == []
    # asking at the same time is agreeing
    await alice.request("recording.request", session_id=sid)
    both = await expert.request("recording.request", session_id=sid)
    assert both["recording"]["state"] == "on" and len(starts(plane)) == 1
    stranger = await Peer.join(client, "bob", "client")
    refused = await stranger.request("recording.stop", session_id=sid)
    assert refused["code"] == "not_participant"


async def test_a_minor_is_never_recorded(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client, minor=True)
    refused = await expert.request("recording.request", session_id=sid)
    assert refused["code"] == "recording_refused"
    assert (await alice.request("recording.request", session_id=sid))["code"] == "recording_refused"
    assert starts(plane) == []


async def test_a_failed_file_or_the_end_turns_recording_off(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    await expert.request("recording.request", session_id=sid)
    on = await alice.request("recording.consent", session_id=sid, accept=True)
    recording_id = on["recording"]["recording_id"]
    plane.emit(RecordingFailed(sid, recording_id, "alice", "disk_too_slow"))
    off = await state(alice, "recording_failed")
    assert off["recording"]["state"] == "off" and off["recording"]["by"] == ""
    assert isinstance(plane.requests[-1], StopRecording)
    plane.emit(RecordingStopped(sid, recording_id, "recording_failed"))  # nothing more to say

    await expert.request("recording.request", session_id=sid)
    await alice.request("recording.consent", session_id=sid, accept=True)
    await expert.request("session.end", session_id=sid)
    ended = await state(alice, "session_ended")
    assert ended["recording"]["state"] == "off"
    late = await alice.request("recording.request", session_id=sid)
    assert late["code"] == "invalid_state"

"""LocalMediaPlane as the control plane sees it: any message, however malformed, gets a reply or
a coded MediaError — never another exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.api import MediaError, Message, Ok, OpenRoom, RoomClosed, Stats
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane

pytestmark = pytest.mark.integration

KINDS = ["open_room", "close_room", "offer", "subscribe", "answer_to_server_offer",
         "add_ice_candidate", "request_keyframe", "leave", "get_stats", "ok", "nonsense"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.sampled_from(["r", "p"]),
    st.sampled_from(["publish", "subscribe"]), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
MESSAGES = st.fixed_dictionaries(
    {"kind": st.sampled_from(KINDS)},
    optional={"room_id": st.one_of(st.just("r"), VALUES)} | {name: VALUES for name in (
        "participant_id", "transport", "sdp", "offer_id", "candidate", "app_data", "reason",
    )},
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=MESSAGES)
async def test_garbage_requests_get_coded_errors(data: dict[str, Any]) -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    try:
        await plane.request(OpenRoom("r"))
        try:
            reply = await plane.request(Message.from_dict(data))
        except MediaError as exc:
            assert exc.code and exc.message
        else:
            assert isinstance(reply, Message)
    finally:
        await plane.close()


async def test_requests_and_events_round_trip_as_dicts() -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    events: list[Message] = []
    plane.on_event(events.append)
    reply = await plane.request(Message.from_dict(OpenRoom("r", {"session": 7}).to_dict()))
    assert reply == Ok()
    stats = await plane.request(Message.from_dict({"kind": "get_stats", "room_id": "r"}))
    assert isinstance(stats, Stats) and Message.from_dict(stats.to_dict()) == stats
    await plane.close()
    assert events == [RoomClosed("r", "shutdown")]
    with pytest.raises(MediaError) as info:
        await plane.request(OpenRoom("r"))
    assert info.value.code == "closed"

"""Bookings reach both parties over the socket, and a due booking opens an accepted session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from signalling.calls.node import SIGNALLING

from ...utils import FakePlane, Peer, build_app


@dataclass
class Booking:
    id: str
    expert_id: str
    client_id: str
    quote: dict[str, Any] | None = None
    expert_name: str = ""
    client_name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "expert_id": self.expert_id, "client_id": self.client_id, "start": "2026-11-30T15:00:00Z"}


@pytest.fixture
async def client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    return await aiohttp_client(build_app(settings, FakePlane()))


async def test_reminders_cancellations_and_opening_on_time(client) -> None:  # type: ignore[no-untyped-def]
    node = client.app[SIGNALLING]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    booking = Booking("b-1", "erin", "alice", client_name="Alice A.")

    await node.bookings.on_booked(booking)
    assert (await expert.expect("booking.update"))["event"] == "booked"
    await node.bookings.on_reminder(booking, 600)
    for peer in (expert, alice):
        reminder = await peer.expect("booking.reminder")
        assert reminder["seconds_before"] == 600 and reminder["booking"]["id"] == "b-1"

    # A waiting instant request gives way to the booked session.
    waiting_request = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await node.bookings.on_due(booking)
    cancelled = await alice.expect("session.state", id=waiting_request, state="ended")
    assert cancelled["session"]["reason"] == "cancelled" and cancelled["session"]["ended_by"] == ""
    opened = await alice.expect("session.state", state="accepted")
    assert opened["session"]["booking_id"] == "b-1" and opened["previous"] is None
    assert opened["session"]["client_name"] == "Alice A."  # the name the client booked with
    assert (await expert.expect("session.state", state="accepted"))["session"]["booking_id"] == "b-1"
    assert await node.availability("erin") == "busy" and await node.waiting("erin") == 0
    assert await node.session_parties(opened["session"]["id"]) == ("erin", "alice", "accepted")
    assert await node.session_parties("nope") is None

    # Due again while both are in that session: both hear why it did not open.
    await node.bookings.on_due(Booking("b-2", "erin", "alice"))
    assert (await alice.expect("error"))["code"] == "already_in_session"
    assert (await expert.expect("error"))["code"] == "already_in_session"
    await node.bookings.on_cancelled(Booking("b-3", "erin", "alice"), by="alice")
    assert (await expert.expect("booking.update"))["by"] == "alice"

"""Which sessions are live: both participants' media flowing, from the SFU's MediaState events.

The SFU reports, per participant, whether its published media flows (already debounced). A
session is billable while every participant it watches flows; the tracker turns the per-side
flags into the Meter's ``media_live`` / ``media_paused`` calls, with the event's own time.
"""

from __future__ import annotations

from .meter import Meter


class LiveTracker:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self._flowing: dict[str, dict[str, bool]] = {}

    def watch(self, session_id: str, participant_ids: tuple[str, ...]) -> None:
        """Start tracking a metered session whose media comes from these participants."""
        self._flowing[session_id] = {p: False for p in participant_ids}

    def forget(self, session_id: str) -> None:
        self._flowing.pop(session_id, None)

    def media_state(self, session_id: str, participant_id: str, flowing: bool, at: float) -> None:
        """Feed one ``sfu.api.MediaState`` (room_id = session id). Unknown sessions or
        participants are ignored: media the meter does not bill for."""
        sides = self._flowing.get(session_id)
        if sides is None or participant_id not in sides or not self.meter.is_open(session_id):
            return
        was_live = all(sides.values())
        sides[participant_id] = flowing
        live = all(sides.values())
        if live and not was_live:
            self.meter.media_live(session_id, at=at)
        elif was_live and not live:
            self.meter.media_paused(session_id, at=at)

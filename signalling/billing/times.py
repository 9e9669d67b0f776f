"""Instants as billing shows them: RFC 3339 in UTC out, ISO 8601 dates/times or Unix seconds in."""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_date_or_time(text: str) -> float:
    """``2026-11-28``, ``2026-11-28T10:00:00Z``, ``2026-11-28T10:00:00+01:00`` or ``1795000000``;
    a date or time without a zone is UTC."""
    text = text.strip()
    try:
        seconds = float(int(text))
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
        except (ValueError, OverflowError):  # 0001-01-01T00:00:00+23:59 is before year 1 in UTC
            raise ValueError(f"{text[:64]!r} is not an ISO 8601 date or time, nor Unix seconds") from None
    if not (0 <= seconds <= END_OF_TIME):
        raise ValueError("times are between 1970-01-01 and 9999-12-31T23:59:59Z")
    return seconds

# 9999-12-31T23:59:59Z: the default end of an open-ended period.
END_OF_TIME = 253402300799.0

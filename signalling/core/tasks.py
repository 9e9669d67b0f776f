"""Stopping a background task at shutdown without waiting for it forever: the media plane's
helper (sfu/tasks.py), one implementation for both planes (the media plane imports nothing of
this one)."""

from sfu.tasks import CANCEL_WAIT_SECONDS, cancel_and_wait

__all__ = ["CANCEL_WAIT_SECONDS", "cancel_and_wait"]

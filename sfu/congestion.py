"""Congestion per subscriber, without simulcast: who gets video, and what the publisher is asked for.

With one encoding per track the SFU cannot give a slow subscriber a smaller picture; what it can
do is keep that subscriber from setting everyone's quality, and stop sending it video it cannot
take (which would only queue and be lost). The policy:

- A subscriber's REMB estimate covers every stream it receives: it is shared among them in
  proportion to their bitrates (``share``), not given whole to each.
- The publisher is asked (REMB) for the lowest estimate among the subscribers that can take the
  stream (``remb_target``): at least ``min_video_bitrate`` and at least ``follow_fraction`` of
  the median estimate. A subscriber far below the others is left out instead of dragging the
  stream down for all.
- A subscriber whose video estimate stays under ``pause_below`` of the stream's bitrate, or
  whose reported loss stays over ``pause_loss``, for ``pause_after`` seconds, has its video
  paused for it alone (audio goes on); the client and the publisher are told (``MediaQuality``).
- It is resumed, on a keyframe, once its estimate has stayed at or above the stream's bitrate for
  ``resume_after`` seconds (when an estimate paused it: loss cannot be judged without the video).
  Because an estimator fed only audio may never climb back, and loss only shows with video, it
  is also resumed to probe after ``probe_after`` seconds, doubling at each probe that congests
  again up to ``max_probe_after``; ``probe_reset_after`` seconds without congestion after a
  probe start the backoff over.

The numbers are ``sfu.options.CongestionOptions`` (``MediaOptions.congestion``). The router
applies the policy once a second; nothing here is on the per-packet path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sfu.options import CongestionOptions

DEFAULT = CongestionOptions()


def share(estimate: int, bitrates: Sequence[int]) -> list[int]:
    """A subscriber's estimate for all its streams, shared in proportion to their bitrates
    (equally while none has a bitrate yet)."""
    weights = [max(b, 1) for b in bitrates]
    total = sum(weights)
    return [estimate * w // total for w in weights] if total else []


def remb_target(estimates: Sequence[int], cap: int, floor: int,
                policy: CongestionOptions = DEFAULT) -> int:
    """What to ask a video publisher for, given its subscribers' estimates (0: none yet)."""
    known = [e for e in estimates if e]
    usable = sorted(e for e in known if e >= policy.min_video_bitrate)
    if usable:
        median = usable[len(usable) // 2]
        target = next(e for e in usable if e >= median * policy.follow_fraction)
    elif known:
        target = min(known)  # nobody can take video well: the best the worst can do
    else:
        target = cap or 1_000_000
    if cap:
        target = min(target, cap)
    return max(target, floor)


@dataclass
class VideoGate:
    """One subscriber's video of one track: paused for congestion or not, and when to change."""

    policy: CongestionOptions = DEFAULT
    paused: bool = False
    since: float | None = None  # when the current pause/resume condition started to hold
    probe_after: float = field(init=False)
    paused_at: float = 0.0
    for_loss: bool = False  # paused for loss, which only a probe can show gone

    def __post_init__(self) -> None:
        self.probe_after = self.policy.probe_after

    def update(self, estimate: int, fraction_lost: int, bitrate: int, now: float) -> bool | None:
        """Once a second: True to pause, False to resume, None to leave as is."""
        policy = self.policy
        if not self.paused:
            short = bool(estimate and bitrate and estimate < bitrate * policy.pause_below)
            congested = short or fraction_lost > policy.pause_loss
            if not congested:
                self.since = None
                if now - self.paused_at > self.probe_after + policy.probe_reset_after:
                    self.probe_after = policy.probe_after  # the last probe held: a fresh start
                return None
            if self.since is None:
                self.since = now
            if now - self.since < policy.pause_after:
                return None
            self.paused = True
            self.since = None
            self.paused_at = now
            self.for_loss = not short
            return True
        if now - self.paused_at >= self.probe_after:  # probe: its estimator may need traffic
            self.probe_after = min(self.probe_after * 2, policy.max_probe_after)
            return self._resume()
        if not self.for_loss and estimate and bitrate and estimate >= bitrate:
            if self.since is None:
                self.since = now
            if now - self.since >= policy.resume_after:
                self.probe_after = policy.probe_after  # recovered on its own: a fresh start
                return self._resume()
        else:
            self.since = None
        return None

    def _resume(self) -> bool:
        self.paused = False
        self.since = None
        return False

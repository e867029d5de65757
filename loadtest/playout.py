"""The firmware's playback, simulated: what a listener would hear from the frames' arrival times.

The device queues incoming Opus packets (at most 40, i.e. 2.4 s of 60 ms frames) and drops any that
arrive when the queue is full (protocol reference §1.8); playback takes one frame every 60 ms. So a
server that bursts overflows the queue (dropped audio) and one that falls behind starves it (the
answer stutters). Pure arithmetic on timestamps, so it can be tested without a network.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FRAME_SECONDS = 0.06
QUEUE_FRAMES = 40


@dataclass
class Playout:
    received: int = 0  # frames that arrived while speaking
    played: int = 0  # frames that made it through the queue
    overflows: int = 0  # frames dropped because the queue was full
    underruns: int = 0  # times playback ran dry mid-answer and then more audio came
    underrun_seconds: float = 0.0  # total silence inside the answer
    max_queue: int = 0
    gaps: list = field(default_factory=list)  # (start, end) of each underrun, to attribute it

    @property
    def played_seconds(self) -> float:
        return self.played * FRAME_SECONDS

    def as_dict(self) -> dict:
        return {"received": self.received, "played": self.played, "overflows": self.overflows,
                "underruns": self.underruns, "underrun_seconds": round(self.underrun_seconds, 3),
                "played_seconds": round(self.played_seconds, 3), "max_queue": self.max_queue}


def simulate(arrivals: list[float], frame_seconds: float = FRAME_SECONDS, capacity: int = QUEUE_FRAMES,
             tolerance: float = 0.005) -> Playout:
    """Play frames arriving at ``arrivals`` (seconds, any origin, non-decreasing).

    Playback starts with the first frame. A frame arriving while a frame plays waits in the queue,
    or is dropped when ``capacity`` frames already wait. When the queue runs dry and a later frame
    comes more than ``tolerance`` after the last one finished, that gap is an underrun (silence the
    listener hears inside the answer). The tail after the last frame is the answer's end, not an
    underrun, whenever ``tts stop`` comes.
    """
    result = Playout()
    queued = 0
    play_end: float | None = None  # when the frame now playing finishes; None = not playing
    for at in arrivals:
        result.received += 1
        while play_end is not None and play_end <= at and queued:  # play what waited, up to now
            queued -= 1
            play_end += frame_seconds
        if play_end is not None and play_end <= at:  # ran dry before this frame came
            gap = at - play_end
            if gap > tolerance:
                result.underruns += 1
                result.underrun_seconds += gap
                result.gaps.append((play_end, at))
            play_end = None
        if play_end is None:
            play_end = at + frame_seconds  # plays at once
            result.played += 1
        elif queued >= capacity:
            result.overflows += 1
        else:
            queued += 1
            result.played += 1
            result.max_queue = max(result.max_queue, queued)
    return result

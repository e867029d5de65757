"""Which decoded uplink packets are too quiet to need Silero.

A listening device in a room hears mostly the room: fans, a television across the room, nobody
talking to it. Silero would score all of it, and say "no speech" every time. A packet whose RMS is
under ``margin_db`` above the room's running noise floor (or under an absolute ``floor_dbfs``) cannot
hold the start of someone speaking to the device, so the listener treats it as silence without a
model run (``Listener``). The Silero stream is not fed the skipped audio: it carries on from the last
audio it scored, which was quiet too, so its state stays that of a quiet room (no reset, no warm-up).

The floor follows the packets that are not speech (it is frozen while an utterance is in progress):
it falls fast to a quieter room and rises slowly, so a short loud moment does not lift it, and a
device that starts listening in a loud room scores everything until the floor has learned the room
(a few seconds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FLOOR_FALL = 0.3  # per packet: the floor moves this far towards a quieter packet's RMS
FLOOR_RISE = 0.02  # per packet: ... and this far towards a louder one (~3 s to learn a louder room)


@dataclass(frozen=True)
class GateSettings:
    """``margin_db``: how far above the noise floor a packet must be to be scored;
    ``floor_dbfs``: packets quieter than this are never scored, whatever the floor."""

    margin_db: float = 6.0
    floor_dbfs: float = -55.0

    @classmethod
    def from_settings(cls) -> GateSettings | None:
        """The process's gate (``XIAOZHI_VAD_ENERGY_GATE*``), or None when it is off."""
        from django.conf import settings

        if not settings.XIAOZHI_VAD_ENERGY_GATE:
            return None
        return cls(settings.XIAOZHI_VAD_ENERGY_GATE_MARGIN_DB, settings.XIAOZHI_VAD_ENERGY_GATE_FLOOR_DBFS)


def rms(pcm: np.ndarray) -> float:
    """Root mean square of float32 PCM in [-1, 1]."""
    if not pcm.size:
        return 0.0
    return float(math.sqrt(float(np.dot(pcm, pcm)) / pcm.size))


class EnergyGate:
    """One session's noise floor and the quiet/not-quiet decision. Lives on the VAD side."""

    def __init__(self, settings: GateSettings):
        self.ratio = 10 ** (settings.margin_db / 20)
        self.absolute = 10 ** (settings.floor_dbfs / 20)
        self.floor = self.absolute  # learns the room from there, upwards
        self.skipped = 0  # packets this gate kept from the model (the process-wide count is vad_gated_packets)

    def quiet(self, level: float, guarded: bool) -> bool:
        """Whether a packet of RMS ``level`` can skip the VAD. Never when ``guarded`` (an utterance
        in progress or voice just heard: the listener says): there every packet is scored, so the
        utterance's start and end are Silero's to find."""
        if guarded:
            return False
        skip = level < self.absolute or level < self.floor * self.ratio
        self.floor += (level - self.floor) * (FLOOR_FALL if level < self.floor else FLOOR_RISE)
        if skip:
            self.skipped += 1
        return skip

"""Turns a device's uplink Opus packets into utterances.

Per-session state only (decoder, VAD stream, buffers); the VAD model itself is shared. ``feed``
(or ``decode`` / ``apply`` around a VAD run shared with other sessions, see ``voice/workers/vad_batcher.py``) is
blocking and runs on the VAD service's thread, a batch of packets at a time, so the event loop
never decodes or runs the model. Tiny packets are the firmware's DTX silence: they skip decoding
and VAD entirely, which makes a quiet listening device almost free. Packets too quiet to hold speech
(``energy_gate.py``) are decoded but skip the VAD. Under overload the batcher may shed a noise-only
session's older packets undecoded (``hot`` says which sessions it must never shed): they wait raw in
the pre-roll, and are decoded only if speech starts right after them.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from voice import live_stats
from voice.audio.opus import OpusDecoder
from voice.pipeline.energy_gate import EnergyGate, GateSettings, rms
from voice.providers.base import VADModel

SAMPLE_RATE = 16000
CHUNK_MS = 32  # Silero's 512-sample chunk at 16 kHz
DTX_MAX_BYTES = 3
PREROLL_PACKETS = 8  # ~0.5 s kept before speech starts so the first syllable is not lost
# Shed packets (raw Opus, undecoded) kept besides: a noise-only session is decoded only every few
# cycles under overload, so speech that began in its shed packets is still there when it is detected.
SHED_PREROLL_PACKETS = 24  # ~1.4 s, ~3 KB
HOT_SECONDS = 1.0  # a session stays a priority this long after its last chunk that sounded like voice
MIN_MANUAL_SECONDS = 0.3
START_CHUNKS = 2  # consecutive voiced chunks that make speech begin (~64 ms)


@dataclass(frozen=True)
class SpeechStarted:
    at: float


@dataclass(frozen=True)
class DecodedBatch:
    """One session's packets after decoding, waiting for their VAD scores."""

    items: list  # (float32 PCM, or None for a DTX packet, arrival time, scored) per packet
    to_score: list[np.ndarray]  # the PCM the VAD must score, packet by packet, in order (the scored items')
    mode: str
    generation: int = 0  # the listener's reset generation the packets were decoded in
    first_number: int = 0  # the listener's number for the first packet (the others follow in order)


@dataclass(frozen=True)
class Utterance:
    pcm: np.ndarray  # float32, 16 kHz mono
    speech_end: float  # monotonic arrival time of the last packet that carried voice
    ended_by: str  # "vad", "listen_stop" or "max_length"

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


@dataclass(frozen=True)
class Pause:
    """Speech stopped ``pause_ms`` ago: the utterance so far, as it would be cut now. The session
    may transcribe it speculatively and ask whether the turn is over
    (``voice/pipeline/speculation.py``); the listener keeps listening and still cuts at the full
    silence."""

    utterance: Utterance


@dataclass(frozen=True)
class SpeechResumed:
    """Voice again after a ``Pause``: whatever was begun on the paused utterance is obsolete."""

    at: float


Event = SpeechStarted | Pause | SpeechResumed | Utterance


class Listener:
    def __init__(self, vad: VADModel, *, silence_ms: int, threshold: float, max_seconds: float, mode: str = "auto",
                 pause_ms: int = 0, gate: GateSettings | None = None):
        """``pause_ms`` (0: never): silence after which a ``Pause`` is reported, before the full
        ``silence_ms`` that cuts. ``gate``: the energy gate's settings (None: every decoded packet
        is scored)."""
        self.decoder = OpusDecoder(SAMPLE_RATE, 1)
        self.vad = vad
        self.vad_stream = vad.new_stream()
        self.silence_ms = silence_ms
        self.pause_ms = pause_ms if 0 < pause_ms < silence_ms else 0
        self.threshold = threshold
        self.release_threshold = max(threshold - 0.15, 0.05)
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.mode = mode
        # (packet number, PCM) of the latest packets before speech, and (packet number, raw Opus) of
        # the latest shed ones: merged in order when speech starts.
        self.preroll: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=PREROLL_PACKETS)
        self.shed_preroll: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=SHED_PREROLL_PACKETS)
        self._packet_number = 0  # packets taken so far (decoded or shed), to merge the two pre-rolls in order
        self._applying = 0  # the number of the packet ``apply`` is at
        self._heard_until = float("-inf")
        self.gate = EnergyGate(gate) if gate is not None else None
        self.voiced_at = float("-inf")  # arrival of the last packet with a chunk at or above the release threshold
        # Resets are asked for on the event loop and carried out on the VAD side (see ``reset``).
        self.generation = 0
        self._applied_generation = 0
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self.in_speech = False
        self.paused = False  # a Pause was reported for the current silence
        self.voiced_run = 0
        self.silent_ms = 0.0
        self.buffer: list[np.ndarray] = []
        self.buffered_samples = 0
        self.last_voice_at = 0.0

    def reset(self, mode: str | None = None) -> None:
        """Forget any partial utterance (new listen start, barge-in).

        The session calls this on the event loop while the VAD thread may be in the middle of a
        batch for this listener, so it only asks: the VAD side's next step carries the reset out
        (``_apply_reset``), and a step that was already under way is discarded (its packets predate
        the reset). The loop never touches the buffers or the VAD stream the thread is using."""
        if mode:
            self.mode = mode
        self.generation += 1

    def _apply_reset(self) -> None:
        wanted = self.generation
        if wanted != self._applied_generation:
            self._reset_utterance()
            self.preroll.clear()
            self.shed_preroll.clear()
            self.vad_stream.reset()
            self._applied_generation = wanted

    @property
    def stale(self) -> bool:
        """A reset was asked for since the last step began."""
        return self.generation != self._applied_generation

    # -- the hot path ------------------------------------------------------------------------------------
    def feed(self, packets: list[tuple[bytes, float]]) -> list[Event]:
        """Decode, score and cut one session's packets on its own: one model run per 32 ms chunk.
        The cross-session batcher (``voice/workers/vad_batcher.py``) runs the same three steps, scoring many
        sessions' chunks together in between."""
        batch = self.decode(packets)
        scores = [self.vad_stream.probabilities(pcm) for pcm in batch.to_score]
        chunks = sum(len(s) for s in scores)
        live_stats.incr("vad_chunks", chunks)
        live_stats.incr("vad_model_runs", chunks)
        return self.apply(batch, scores)

    @property
    def hot(self) -> bool:
        """Whether this session's audio matters now: push-to-talk, an utterance in progress, or
        voice-like audio within ``HOT_SECONDS``. The batcher serves hot sessions first and never
        sheds their packets. Read on the loop while the VAD side writes it: a plain attribute read."""
        if self.mode == "manual" or self.in_speech:
            return True
        return self.heard_until - self.voiced_at < HOT_SECONDS

    @property
    def heard_until(self) -> float:
        """Arrival time of the newest packet the VAD side has taken (decoded, gated or shed)."""
        return self._heard_until

    def shed(self, packets: list[tuple[bytes, float]]) -> None:
        """Step 0, under overload only (the batcher decides): keep these packets undecoded in the
        shed pre-roll. They are decoded only if speech starts within ``SHED_PREROLL_PACKETS`` of them.
        The Opus decoder skips them as it would lost packets."""
        self._apply_reset()
        for packet, arrived in packets:
            self._packet_number += 1
            if len(packet) > DTX_MAX_BYTES:
                self.shed_preroll.append((self._packet_number, packet))
            self._heard_until = max(self._heard_until, arrived)

    def decode(self, packets: list[tuple[bytes, float]]) -> DecodedBatch:
        """Step 1: Opus-decode the packets (DTX ones skip it) and list the PCM the VAD must score:
        every decoded packet the energy gate does not find quiet, none in manual mode (which cuts
        on ``listen stop``, not on voice)."""
        self._apply_reset()
        items: list[tuple[np.ndarray | None, float, bool]] = []
        first_number = self._packet_number + 1
        to_score: list[np.ndarray] = []
        scoring = self.mode != "manual"
        gated = 0
        guarded = self.in_speech or self.hot  # no gate in an utterance, or right after voice
        for packet, arrived in packets:
            self._packet_number += 1
            self._heard_until = max(self._heard_until, arrived)
            if len(packet) <= DTX_MAX_BYTES:
                items.append((None, arrived, False))
                continue
            pcm = self.decoder.decode_float(packet)
            scored = scoring and not (self.gate is not None and self.gate.quiet(rms(pcm), guarded))
            gated += scoring and not scored
            # Whether speech starts in this batch is known only after scoring: from its first
            # scored packet on, the rest is scored too (a pause in the first words is not skipped).
            guarded = guarded or scored
            items.append((pcm, arrived, scored))
            if scored:
                to_score.append(pcm)
        if gated:
            live_stats.incr("vad_gated_packets", gated)
        return DecodedBatch(items, to_score, self.mode, self._applied_generation, first_number)

    def apply(self, batch: DecodedBatch, probs: list[list[float]]) -> list[Event]:
        """Step 3: run the utterance state machine over the packets, ``probs[i]`` being the VAD
        scores of ``batch.to_score[i]``."""
        if len(probs) != len(batch.to_score):
            raise ValueError(f"expected VAD scores for {len(batch.to_score)} packets, got {len(probs)}")
        if batch.generation != self.generation:
            return []  # reset while these packets were being scored: they belong to the old utterance
        scores = iter(probs)
        events: list[Event] = []
        for number, (pcm, arrived, scored) in enumerate(batch.items, batch.first_number):
            self._applying = number
            if pcm is None:
                self._silence(60.0, events)
            elif batch.mode == "manual":
                self._append(pcm)
                self.last_voice_at = arrived
                if self.buffered_samples >= self.max_samples:
                    events.append(self._cut("max_length"))
            elif scored:
                self._scored_packet(pcm, arrived, next(scores), events)
            else:  # the energy gate found it quiet: silence, as Silero would have said
                self.voiced_run = 0
                self._scored_packet(pcm, arrived, [], events)
        if batch.generation != self.generation:
            return []  # reset while this ran: the next step starts afresh
        return events

    def _scored_packet(self, pcm: np.ndarray, arrived: float, probs: list[float], events: list) -> None:
        for p in probs:
            if p >= self.threshold:
                self.voiced_run += 1
            elif p < self.release_threshold:
                self.voiced_run = 0
            if p >= self.release_threshold:
                self.voiced_at = arrived
        voiced = any(p >= self.threshold for p in probs)
        if not self.in_speech:
            self.preroll.append((self._applying, pcm))
            if self.voiced_run >= START_CHUNKS:
                self._start(arrived, events)
            return
        self._append(pcm)
        if voiced:
            self.last_voice_at = arrived
            self.silent_ms = 0.0
            if self.paused:
                self.paused = False
                events.append(SpeechResumed(arrived))
        elif all(p < self.release_threshold for p in probs):
            self._count_silence(len(pcm) * 1000 / SAMPLE_RATE, events)
        if self.in_speech and self.buffered_samples >= self.max_samples:
            events.append(self._cut("max_length"))

    def _start(self, arrived: float, events: list) -> None:
        self.in_speech = True
        self.silent_ms = 0.0
        self.last_voice_at = arrived
        for pcm in self._preroll_pcm():
            self._append(pcm)
        self.preroll.clear()
        self.shed_preroll.clear()
        events.append(SpeechStarted(arrived))

    def _preroll_pcm(self) -> list[np.ndarray]:
        """The pre-roll in packet order: the decoded packets, and the shed ones (if any) that are at
        most ``SHED_PREROLL_PACKETS`` old, decoded now by a decoder of their own (a run of them
        begins afresh, as after packet loss)."""
        if not self.shed_preroll:
            return [pcm for _, pcm in self.preroll]
        oldest = self._packet_number - SHED_PREROLL_PACKETS
        merged = sorted([(n, pcm) for n, pcm in self.preroll] + [(n, raw) for n, raw in self.shed_preroll if n > oldest],
                        key=lambda item: item[0])
        out, side, previous = [], None, None
        for n, item in merged:
            if isinstance(item, bytes):
                if side is None or previous != n - 1:
                    side = OpusDecoder(SAMPLE_RATE, 1)
                out.append(side.decode_float(item))
                previous = n
            else:
                out.append(item)
        return out

    def _silence(self, ms: float, events: list) -> None:
        """A DTX packet: 60 ms of silence, known without decoding or VAD."""
        silence = np.zeros(int(ms * SAMPLE_RATE / 1000), np.float32)
        if self.mode == "manual":
            if self.buffer:
                self._append(silence)
            return
        self.voiced_run = 0
        if not self.in_speech:
            self.preroll.append((self._applying, silence))
            return
        self._append(silence)
        self._count_silence(ms, events)

    def _count_silence(self, ms: float, events: list) -> None:
        self.silent_ms += ms
        if self.silent_ms >= self.silence_ms:
            events.append(self._cut("vad"))
        elif self.pause_ms and not self.paused and self.silent_ms >= self.pause_ms:
            self.paused = True
            events.append(self._pause())

    def _pause(self) -> Pause:
        pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.float32)
        return Pause(Utterance(pcm, self.last_voice_at, "end_of_turn"))

    def _append(self, pcm: np.ndarray) -> None:
        self.buffer.append(pcm)
        self.buffered_samples += len(pcm)

    def _cut(self, reason: str) -> Utterance:
        pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.float32)
        utterance = Utterance(pcm, self.last_voice_at, reason)
        self._reset_utterance()
        return utterance

    def finish(self) -> Utterance | None:
        """``listen stop``: hand over what was heard. In manual mode that is everything since
        ``listen start`` (if long enough to be speech); in auto mode only speech already begun.
        Called on the loop once the session's queued packets have been heard."""
        self._apply_reset()
        if self.mode == "manual":
            if self.buffered_samples < MIN_MANUAL_SECONDS * SAMPLE_RATE:
                self._reset_utterance()
                return None
            return self._cut("listen_stop")
        if self.in_speech:
            return self._cut("listen_stop")
        return None

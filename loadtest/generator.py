"""Drive many simulated devices from one asyncio loop.

Each device is a ``SimulatedDevice`` (the same client as ``talk`` and the tests), started on a
ramp, doing turns until its count or the run's duration is reached. Audio is encoded before the
run, received audio is kept only as sizes and times, and every paced frame reports how late it
left, so the report can say when the generator, not the server, was the bottleneck.

With ``sync_start`` every device first connects and says hello, then all start their first turn in
the same moment, ``stagger_ms`` apart (device 0 first): simultaneous talkers with a known arrival
order, for the fairness figures (who is answered, in which order, who hears "busy").
"""
from __future__ import annotations

import asyncio
import gc
import random
import time
from dataclasses import dataclass, field

from loadtest.playout import simulate
from voice.pipeline.turn import BUSY_REPLY
from voice.protocol import ServerHello, Stt, Tts
from loadtest.simulated_device import SimulatedDevice

MAX_GAPS_KEPT = 20  # underruns listed per turn in the report (all are counted)


@dataclass
class Config:
    target: str = "http://127.0.0.1:8000"
    devices: int = 1
    ramp_up: float = 0.0  # seconds over which devices start
    turns: int | None = 1  # per device; None = until ``duration``
    duration: float | None = None  # seconds; no new turn starts after it
    mode: str = "auto"
    utterances: list[list[bytes]] = field(default_factory=list)
    think_time: float = 1.0
    binary_version: int | None = None
    turn_timeout: float = 60.0
    trailing_silence: float = 3.0
    seed: int = 0
    sync_start: bool = False  # all devices connect first, then start their first turn together
    stagger_ms: float = 0.0  # with sync_start: device i starts speaking i * stagger_ms after device 0


def ota_or_ws(target: str) -> tuple[str | None, str | None]:
    """(OTA URL, WebSocket URL): a ws(s):// target skips OTA; an http(s) URL is the OTA URL when it
    names one, else the server's base URL."""
    if target.startswith(("ws://", "wss://")):
        return None, target
    if "/ota" in target:
        return target, None
    return target.rstrip("/") + "/xiaozhi/ota/", None


class Run:
    """One load-test run; ``devices``/``turns``/``lateness_ms`` fill in as it goes (for progress)."""

    def __init__(self, config: Config):
        self.config = config
        self.devices: list[dict] = []
        self.turns: list[dict] = []
        self.lateness_ms: list[float] = []
        self.started = 0.0
        self.active = 0
        self.stalls: list[tuple[float, float]] = []  # (start, end) monotonic, when this loop was blocked
        self._waiting = 0  # sync_start: devices not yet connected (or failed)
        self._go: asyncio.Event | None = None
        self.go_at = 0.0  # sync_start: monotonic time device 0 starts speaking

    async def _watch_loop(self, tick: float = 0.01, stall: float = 0.02) -> None:
        """Record when the event loop itself was blocked: frames that arrive then get late timestamps,
        so a gap the playout sees during a stall may be the generator's, not the server's."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - before - tick > stall:
                self.stalls.append((before + tick, now))

    def during_stall(self, start: float, end: float, margin: float = 0.01) -> bool:
        return any(s - margin <= end and start <= e + margin for s, e in self.stalls[-5000:])

    def _late(self, scheduled: float, actual: float) -> None:
        self.lateness_ms.append(max(0.0, (actual - scheduled) * 1000))

    async def run(self) -> None:
        # Everything loaded so far (Django, the voice model used to encode the utterances) lives for the
        # whole run: keep it out of the collector's full passes, which otherwise stall the pacing loop.
        gc.collect()
        gc.freeze()
        self.started = time.monotonic()
        c = self.config
        step = c.ramp_up / c.devices if c.devices > 1 and not c.sync_start else 0.0
        self._waiting, self._go = c.devices, asyncio.Event()
        watcher = asyncio.create_task(self._watch_loop())
        try:
            await asyncio.gather(*(self._device(i, i * step) for i in range(c.devices)))
        finally:
            watcher.cancel()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _arrived(self) -> None:
        """sync_start: one more device is ready (or failed); the last one fixes the common start."""
        self._waiting -= 1
        if self._waiting == 0:
            self.go_at = time.monotonic() + 0.2  # a moment for every device's task to be waiting
            self._go.set()

    async def _wait_for_start(self, index: int) -> None:
        await self._go.wait()
        await asyncio.sleep(max(0.0, self.go_at + index * self.config.stagger_ms / 1000 - time.monotonic()))

    async def _device(self, index: int, delay: float) -> None:
        c = self.config
        await asyncio.sleep(delay)
        rng = random.Random(c.seed * 100003 + index)
        info = {"device": index, "connected": False, "connect_ms": None, "hello_ms": None, "error": None}
        self.devices.append(info)
        device = SimulatedDevice(binary_version=c.binary_version or 1, keep_audio=False)
        device.on_send = self._late
        device.continuous_pace = True
        ota_url, ws_url = ota_or_ws(c.target)
        self.active += 1
        arrived = False
        try:
            t0 = time.monotonic()
            try:
                if ota_url:
                    await device.ota(ota_url)
                    if c.binary_version:
                        device.use_binary_version(c.binary_version)
                await device.connect(ws_url, hello=False)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the server is a figure
                info["error"] = "connect_failed" if ota_url is None or device.ws_url else "ota_failed"
                info["detail"] = f"{type(exc).__name__}: {exc}"[:200]
                return
            t1 = time.monotonic()
            info["connect_ms"] = (t1 - t0) * 1000
            hello = await self._hello(device)
            if hello is None:
                info["error"] = "no_hello"
                return
            info["hello_ms"] = (time.monotonic() - t1) * 1000
            info["connected"] = True
            if c.sync_start:
                arrived = True
                self._arrived()
                await self._wait_for_start(index)
            n = 0
            while True:
                if c.turns is not None and n >= c.turns:
                    break
                if c.duration is not None and self.elapsed() >= c.duration:
                    break
                frames = c.utterances[(index + n) % len(c.utterances)]
                turn = await self._turn(device, index, n, frames)
                turn["sync"] = c.sync_start and n == 0
                self.turns.append(turn)
                n += 1
                if turn["error"] == "closed":
                    break
                if c.think_time:
                    await asyncio.sleep(c.think_time * rng.uniform(0.8, 1.2))
        finally:
            if c.sync_start and not arrived:
                self._arrived()  # a device that never got in must not hold the others back
            self.active -= 1
            try:
                await device.close()
            except Exception:  # noqa: BLE001
                pass

    async def _hello(self, device: SimulatedDevice):
        """Send hello on the already open link (connect() was told not to) and wait for the answer."""
        from voice.protocol import AudioParams, Hello, encode
        from loadtest.simulated_device import UPLINK_RATE

        await device.send_json(encode(Hello(version=device.binary_version, features={"mcp": True},
                                            audio_params=AudioParams("opus", UPLINK_RATE, 1, 60))))
        try:
            event = await device.wait_for(lambda e: isinstance(e.message, ServerHello) or e.kind == "closed", 10)
        except TimeoutError:
            return None
        device.server_hello = event.message if isinstance(event.message, ServerHello) else None
        return device.server_hello

    async def _turn(self, device: SimulatedDevice, index: int, n: int, frames: list[bytes]) -> dict:
        c = self.config
        started = self.elapsed()
        row = {"device": index, "turn": n, "at_s": round(started, 2), "error": None}
        try:
            result = await device.turn(frames, mode=c.mode, timeout=c.turn_timeout, trailing_silence=c.trailing_silence)
        except Exception as exc:  # noqa: BLE001
            row["error"] = "closed" if device.close_code is not None else type(exc).__name__
            device.events.clear()
            return row
        events = result.events
        tts_start = next((e for e in events if isinstance(e.message, Tts) and e.message.state == "start"), None)
        # The firmware queues audio only while speaking, i.e. after tts start.
        arrivals = [e.at for e in events if e.kind == "audio" and tts_start is not None and e.at >= tts_start.at]
        play = simulate(arrivals)
        r = lambda v: None if v is None else round(v, 1)  # noqa: E731
        row.update(stt_ms=r(result.stt_ms), tts_start_ms=r(result.tts_start_ms), ttfa_ms=r(result.first_audio_ms),
                   audio_frames=sum(1 for e in events if e.kind == "audio"), audio_before_tts_start=
                   sum(1 for e in events if e.kind == "audio") - len(arrivals),
                   underruns=play.underruns, overflows=play.overflows,
                   underruns_in_generator_stall=sum(1 for a, b in play.gaps if self.during_stall(a, b)), underrun_seconds=round(play.underrun_seconds, 3),
                   played_seconds=round(play.played_seconds, 2), stt_text=result.stt,
                   # where each underrun was: seconds after this answer's first audio, and how long
                   underrun_gaps=[(round(a - arrivals[0], 2), round(b - a, 2)) for a, b in play.gaps[:MAX_GAPS_KEPT]])
        closed = any(e.kind == "closed" for e in events)
        sentence = next((e.message.text for e in events if isinstance(e.message, Tts) and e.message.state == "sentence_start"), None)
        row["reply"] = sentence
        texts = [e.message.text for e in events if isinstance(e.message, Tts) and e.message.state == "sentence_start"]
        first_audio = arrivals[0] if arrivals else None
        at = lambda t: None if t is None else round(t - self.started, 3)  # noqa: E731 - run-relative seconds
        row.update(speech_end_s=at(result.speech_end), tts_start_s=at(tts_start.at if tts_start else None),
                   first_audio_s=at(first_audio), busy=BUSY_REPLY in texts)
        if row["busy"]:
            # The server's spoken refusal (a full queue), with or without stt: counted apart, and its
            # speed says nothing about answering, so it stays out of the latency figures.
            row["error"] = "busy"
            for key in ("tts_start_ms", "ttfa_ms"):
                row["reply_" + key], row[key] = row[key], None
        elif not any(isinstance(e.message, Stt) for e in events):
            if tts_start is not None:
                # Spoken without hearing us: a refusal such as "I am busy" (the server shedding load).
                # Its speed says nothing about answering, so it stays out of the latency figures.
                row["error"] = "reply_without_stt"
                for key in ("tts_start_ms", "ttfa_ms"):
                    row["reply_" + key], row[key] = row[key], None
            else:
                row["error"] = "closed" if closed else "no_stt"
        elif tts_start is None:
            row["error"] = "closed" if closed else "no_tts_start"
        elif not arrivals:
            row["error"] = "closed" if closed else "no_audio"
        elif not result.stopped:
            row["error"] = "closed" if closed else "no_tts_stop"
        device.events.clear()  # bounded memory: the turn is measured
        return row

    def progress(self) -> str:
        from voice.percentile import percentile

        ttfa = [t.get("ttfa_ms") for t in self.turns]
        p50, p95 = percentile(ttfa, 0.5), percentile(ttfa, 0.95)
        late = max(self.lateness_ms[-2000:], default=0.0)
        errors = sum(1 for t in self.turns if t["error"]) + sum(1 for d in self.devices if d["error"])
        f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        return (f"[{self.elapsed():6.1f}s] devices {len(self.devices)}/{self.config.devices} active {self.active} "
                f"turns {sum(1 for t in self.turns if not t['error'])} errors {errors} "
                f"ttfa p50 {f(p50)} p95 {f(p95)} ms, send lateness (recent max) {late:.0f} ms")

"""Listening capacity: how many devices streaming audio one server process keeps up with in real time.

Every device does what a listening xiaozhi device does with its microphone open: OTA-free handshake,
hello, ``listen start`` (auto mode), then a 60 ms Opus frame every 60 ms, forever. The audio is real
speech (the bundled Piper voice) at a low level under noise, like a television across the room: every
frame is a full Opus packet that the server must decode and run through Silero, but the VAD (rightly)
hears no one speaking to it, so no utterance ends and no turn starts. That isolates the listening path
(socket -> frame -> packet queue -> decode + VAD) from ASR/LLM/TTS; the server runs the fake providers
anyway, so a stray turn would cost nothing, and the run reports any turn it saw.

For each batching mode (``XIAOZHI_VAD_BATCHING``) and each device count, a fresh Daphne is started
(``loadtest.server``), and the devices are driven from a *separate process* (this script with
``generate``), so the load generator's CPU is its own and measured. While they stream, the server's
``/api/performance/`` is polled every second for the packets its VAD has heard, its packet backlog,
dropped packets and the VAD lag, and the CPU of both processes is sampled.

The server keeps up at N devices when no packet is dropped or lost and the backlog (packets sent
minus packets the VAD has heard) does not grow over the measuring window by more than
``--max-growth`` seconds of audio per device. A step is void when the generator itself fell behind
its 60 ms clock (send lateness p95 above ``--max-generator-lateness-ms``).

    python benchmarks/listening_capacity.py --modes packet,cross_session --steps 50,100,150,200,300,400 \
        --duration 40 --output-dir benchmarks/results

writes ``listening-<mode>.json`` per mode (every step, with its samples) and prints a table.

``--asking 1`` adds one device that asks questions among the listeners (issue 12, goal 4): the
simulated device (``loadtest.simulated_device``, in a third process, ``ask``) speaks a Piper question
in auto mode, waits for the answer and asks again, for the whole window. Its turns' TTFA (last speech
frame -> first audio frame), stutter (``loadtest.playout``: underruns) and the server's counters of audio
lost or dropped from sessions with speech in progress (``audio_lost_hot``, ``audio_dropped_hot``) are in
the step's ``asking`` part. ``--steps 0`` is the idle baseline (the asking device alone). ``--tag`` names
the output (``listening-<tag>-<mode>.json``) so runs do not overwrite each other.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voice.percentile import percentile  # noqa: E402  (after the path is set)
from voice.pipeline.turn_row import MARKS  # noqa: E402

FRAME_SECONDS = 0.06
MAX_GAPS_KEPT = 20  # underruns listed with their place in the reply, per step
SLOTS = 6  # devices are spread over six 10 ms phases of the 60 ms frame clock, as real devices are
TEXT = ("The weather tomorrow will be mild with a light breeze from the west. In the afternoon clouds may gather "
        "over the hills, and by evening a little rain could fall in the valleys. Remember to bring a coat.")


# -- audio ----------------------------------------------------------------------------------------------------
def prepare_frames(path: Path, speech_gain: float, noise_level: float) -> dict:
    """Piper speech at ``speech_gain`` under Gaussian noise, as 16 kHz 60 ms Opus frames, written to
    ``path`` (length-prefixed). Checked with Silero: the mix must stay under the release threshold."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    import django

    django.setup()
    import numpy as np

    from voice.audio.opus import OpusEncoder
    from voice.audio.resample import resample
    from voice.providers import registry
    from voice.providers.vad.silero import SileroVAD

    tts = registry.get_tts("piper")
    speech = np.concatenate([np.asarray(c, np.int16) for c in tts.synthesize(TEXT)])
    speech = resample(speech, tts.sample_rate, 16000).astype(np.float32) / 32768.0
    mix = speech * speech_gain + np.random.default_rng(0).normal(0, noise_level, speech.size).astype(np.float32)
    top = max(SileroVAD().new_stream().probabilities(np.concatenate([mix, mix])))
    if top >= 0.35:
        raise SystemExit(f"the background mix is heard as speech (VAD max {top:.2f}); lower --speech-gain")
    frames = OpusEncoder(16000, 60).encode((np.clip(mix, -1, 1) * 32767).astype(np.int16))
    with open(path, "wb") as out:
        for frame in frames:
            out.write(struct.pack("<H", len(frame)) + frame)
    sizes = [len(f) for f in frames]
    return {"seconds": round(len(frames) * FRAME_SECONDS, 2), "frames": len(frames), "vad_max_probability": round(top, 3),
            "packet_bytes_median": statistics.median(sizes), "speech_gain": speech_gain, "noise_level": noise_level}


def read_frames(path: Path) -> list[bytes]:
    data, frames, at = Path(path).read_bytes(), [], 0
    while at < len(data):
        (size,) = struct.unpack_from("<H", data, at)
        frames.append(data[at + 2 : at + 2 + size])
        at += 2 + size
    return frames


# -- the generator (a separate process) -------------------------------------------------------------------------
async def generate(ws_url: str, devices: int, duration: float, frames_path: Path, report_every: float) -> None:
    """Connect ``devices`` sockets, then stream a frame per device every 60 ms for ``duration`` s,
    printing a JSON progress line every ``report_every`` s: frames sent, send lateness, own CPU."""
    import gc

    from websockets.asyncio.client import connect

    frames = read_frames(frames_path)
    gc.collect()
    gc.freeze()  # keep the collector's full passes off the pacing loop
    sockets, received = [], {"json": 0, "audio": 0, "closed": 0}

    async def drain(ws):
        try:
            async for message in ws:
                received["audio" if isinstance(message, bytes) else "json"] += 1
        except Exception:  # noqa: BLE001 - a closed socket is counted, not raised
            pass
        received["closed"] += 1

    for i in range(devices):
        mac = f"02:1c:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00"
        ws = await connect(ws_url, additional_headers={"Device-Id": mac, "Client-Id": f"listen-{i}", "Protocol-Version": "1"},
                           compression=None, open_timeout=30, max_queue=64,
                           ping_interval=None)  # the firmware sends no pings; a server behind must not end the run
        await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                                  "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}))
        await ws.recv()  # the server's hello
        await ws.send(json.dumps({"type": "listen", "state": "start", "mode": "auto"}))
        sockets.append(ws)
    readers = [asyncio.create_task(drain(ws)) for ws in sockets]
    slots = [sockets[s::SLOTS] for s in range(SLOTS)]
    offsets = [(i * 37) % len(frames) for i in range(devices)]  # every device at its own place in the audio
    sent, lateness, cpu0, wall0 = 0, [], time.process_time(), time.monotonic()
    start = time.monotonic() + 0.2
    next_report = start + report_every
    print(json.dumps({"event": "streaming", "t": start, "devices": devices}), flush=True)
    k = 0
    while time.monotonic() < start + duration:
        for slot, members in enumerate(slots):
            due = start + k * FRAME_SECONDS + slot * FRAME_SECONDS / SLOTS
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(max(0.0, time.monotonic() - due) * 1000)
            for j, ws in enumerate(members):
                index = slot + j * SLOTS
                await ws.send(frames[(offsets[index] + k) % len(frames)])
            sent += len(members)
        k += 1
        now = time.monotonic()
        if now >= next_report:
            print(json.dumps({"event": "progress", "t": now, "sent": sent, "late_p50_ms": round(percentile(lateness, 0.5), 2),
                              "late_p95_ms": round(percentile(lateness, 0.95), 2), "late_max_ms": round(max(lateness), 2),
                              "cpu_s": round(time.process_time() - cpu0, 3), "wall_s": round(now - wall0, 3),
                              "received": dict(received)}), flush=True)
            lateness.clear()
            next_report += report_every
    print(json.dumps({"event": "done", "t": time.monotonic(), "sent": sent, "received": dict(received)}), flush=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# -- the asking device (a separate process) ---------------------------------------------------------------------
QUESTION = "What is the capital of France?"


def prepare_question(path: Path) -> None:
    from loadtest.simulated_device import spoken_frames

    with open(path, "wb") as out:
        for frame in spoken_frames(QUESTION):
            out.write(struct.pack("<H", len(frame)) + frame)


async def ask(ws_url: str, frames_path: Path, wait: float, duration: float, gap: float) -> None:
    """After ``wait`` s, ask the question again and again for ``duration`` s, printing a JSON line per
    turn: TTFA, stt, frames received, underruns (the firmware's playout simulated)."""
    from loadtest.playout import simulate
    from loadtest.simulated_device import SimulatedDevice

    frames = read_frames(frames_path)
    device = SimulatedDevice(device_id="02:aa:aa:aa:aa:01", client_id="asking-device", keep_audio=False, mcp=False)
    await device.connect(ws_url)
    await asyncio.sleep(wait)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        result = await device.turn(frames, mode="auto", timeout=20)
        arrivals = [e.at for e in result.events if e.kind == "audio"]
        playout = simulate(arrivals)
        print(json.dumps({"event": "turn", "t": time.monotonic(), "ttfa_ms": result.first_audio_ms, "stt": result.stt,
                          "stt_ms": result.stt_ms, "audio_frames": len(arrivals), "stopped": result.stopped,
                          "underruns": playout.underruns, "underrun_seconds": round(playout.underrun_seconds, 3),
                          # where each stutter was: seconds into the reply's audio, and how long
                          "underrun_gaps": [[round(start - arrivals[0], 3), round(stop - start, 3)] for start, stop in playout.gaps],
                          "overflows": playout.overflows}), flush=True)
        await asyncio.sleep(gap)
    await device.close()


def summarise_asking(turns: list[dict], counters_first: dict, counters_last: dict, stages: dict | None = None) -> dict:
    """``stages``: the server's ``latency_ms`` at the last poll, whose turns are the asking device's:
    where its time went on the server (ms after the server's own end of speech), p50."""
    ttfa = [t["ttfa_ms"] for t in turns if t["ttfa_ms"] is not None]
    delta = lambda key: counters_last.get(key, 0) - counters_first.get(key, 0)  # noqa: E731
    return {"turns": len(turns), "answered": sum(1 for t in turns if t["ttfa_ms"] is not None and t["stopped"]),
            "ttfa_ms_p50": round(statistics.median(ttfa), 1) if ttfa else None,
            "ttfa_ms_p90": round(percentile(ttfa, 0.9), 1) if ttfa else None,
            "ttfa_ms": [round(x) for x in ttfa],
            "stt_ms": [round(t["stt_ms"]) for t in turns if t["stt_ms"] is not None],  # speech end -> transcript
            "underruns": sum(t["underruns"] for t in turns), "underrun_seconds": round(sum(t["underrun_seconds"] for t in turns), 3),
            "underrun_gaps": [gap for t in turns for gap in t.get("underrun_gaps", [])][:MAX_GAPS_KEPT],
            "audio_lost_hot": delta("audio_lost_hot"), "audio_dropped_hot": delta("audio_dropped_hot"),
            "server_stage_ms_p50": {f"{mark}_ms": (stages or {}).get(f"{mark}_ms", {}).get("p50") for mark in MARKS}}


# -- one step: a fresh server, N devices -----------------------------------------------------------------------
def _server_pid() -> int:
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "xiaozhi.server" in " ".join(child.cmdline()):
            return child.pid
    raise RuntimeError("the Daphne process was not found")


def _thread_cpu(process) -> tuple[float, float]:
    """(main thread = the event loop, every other thread = VAD and friends) CPU seconds so far."""
    main = other = 0.0
    for thread in process.threads():
        if thread.id == process.pid:
            main += thread.user_time + thread.system_time
        else:
            other += thread.user_time + thread.system_time
    return main, other


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


def run_step(mode: str, devices: int, args, frames_path: Path) -> dict:
    import httpx
    import psutil

    from loadtest.server import local_server

    env = {"XIAOZHI_VAD_BATCHING": mode, "XIAOZHI_VAD_MAX_BATCH": str(args.max_batch),
           "XIAOZHI_IDLE_TIMEOUT_SECONDS": "3600", "XIAOZHI_MONITORING_SCHEDULER": "off", "LOG_LEVEL": "WARNING",
           # room for every benchmark device (the profile's socket cap and VAD queue are sized for production)
           "XIAOZHI_PERF__SERVER__MAX_CONNECTIONS": str(devices + 50),
           # every simulated device comes from 127.0.0.1, which reads the API without a token here
           "XIAOZHI_RATE_LIMIT_EXEMPT": "127.0.0.1", "XIAOZHI_MONITORING_PUBLIC": "true",
           "XIAOZHI_PERF__SERVICES__VAD__QUEUE_SIZE": str(2 * devices + 50)}
    env.update(item.split("=", 1) for item in args.server_env)
    with local_server("fake", env=env) as base:
        server = psutil.Process(_server_pid())
        ws_url = base.replace("http://", "ws://") + "/xiaozhi/v1/"
        total = args.warmup + args.duration
        generator = subprocess.Popen(
            [sys.executable, __file__, "generate", "--ws", ws_url, "--devices", str(devices), "--duration", str(total),
             "--frames", str(frames_path)], stdout=subprocess.PIPE, cwd=ROOT)
        gen_process = psutil.Process(generator.pid)
        asker, ask_lines, ask_buffer, counters_first, counters_last, stages_last = None, [], "", None, {}, {}
        reports, polls = [], []
        os.set_blocking(generator.stdout.fileno(), False)
        client = httpx.Client(timeout=10)
        streaming_at = None
        buffer = ""
        while True:
            chunk = (generator.stdout.read() or b"").decode()
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.strip():
                    report = json.loads(line)
                    reports.append(report)
                    if report["event"] == "streaming":
                        streaming_at = report["t"]
                        if args.asking:
                            asker = subprocess.Popen(
                                [sys.executable, __file__, "ask", "--ws", ws_url, "--frames", str(frames_path.with_name("question.bin")),
                                 "--wait", str(args.warmup), "--duration", str(args.duration - 4)], stdout=subprocess.PIPE, cwd=ROOT)
                            os.set_blocking(asker.stdout.fileno(), False)
            if asker is not None:
                ask_buffer += (asker.stdout.read() or b"").decode()
                *lines, ask_buffer = ask_buffer.split("\n")
                ask_lines += [json.loads(line) for line in lines if line.strip()]
            if generator.poll() is not None and not chunk:
                break
            if streaming_at is not None:
                perf = client.get(f"{base}/api/performance/").json()
                now = time.monotonic()
                counters, gauges = perf["counters"], perf["gauges"]
                main_cpu, other_cpu = _thread_cpu(server)
                try:
                    gen_cpu = sum(gen_process.cpu_times()[:2])
                except psutil.NoSuchProcess:
                    gen_cpu = None
                if counters_first is None and now >= streaming_at + args.warmup:
                    counters_first = counters
                counters_last, stages_last = counters, perf["latency_ms"]
                polls.append({"t": now, "heard": counters.get("vad_packets", 0), "dropped": counters.get("audio_dropped", 0),
                              "shed": counters.get("vad_shed_packets", 0), "gated": counters.get("vad_gated_packets", 0),
                              "lost": counters.get("audio_lost", 0), "pending": gauges.get("vad_pending_packets", 0),
                              "lag_ms": perf["latency_ms"].get("vad_lag_ms"), "turns": counters.get("turns", 0),
                              "chunks": counters.get("vad_chunks", 0), "runs": counters.get("vad_model_runs", 0),
                              "server_cpu_main_s": main_cpu, "server_cpu_other_s": other_cpu, "generator_cpu_s": gen_cpu})
            time.sleep(args.poll)
        client.close()
        if generator.returncode != 0:
            raise RuntimeError(f"the generator failed with exit code {generator.returncode}")
        if asker is not None:
            rest, _ = asker.communicate(timeout=60)
            ask_lines += [json.loads(line) for line in (ask_buffer + rest.decode()).split("\n") if line.strip()]
            if asker.returncode != 0:
                raise RuntimeError(f"the asking device failed with exit code {asker.returncode}")
    step = summarise(mode, devices, args, reports, polls, streaming_at)
    # The server's full garbage collections over the step (each stopped the process: voice/gc_watch.py)
    step["gc"] = {"full_collections": counters_last.get("gc_collections_gen2", 0) - (counters_first or {}).get("gc_collections_gen2", 0),
                  "pause_ms": stages_last.get("gc_pause_ms")}  # pauses: since the server started (its 300 s window)
    if args.asking:
        step["asking"] = summarise_asking(ask_lines, counters_first or {}, counters_last, stages_last)
    return step


def summarise(mode, devices, args, reports, polls, streaming_at) -> dict:
    progress = [r for r in reports if r["event"] == "progress"]
    begin, end = streaming_at + args.warmup, streaming_at + args.warmup + args.duration
    window = [p for p in polls if begin <= p["t"] <= end]
    if len(window) < 3 or len(progress) < 2:
        raise RuntimeError("too few samples in the measuring window")

    def sent_at(t: float) -> float:  # the generator's own count, interpolated at a poll's time
        points = [(streaming_at, 0)] + [(r["t"], r["sent"]) for r in progress]
        for (t0, s0), (t1, s1) in zip(points, points[1:]):
            if t0 <= t <= t1:
                return s0 + (s1 - s0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    backlog = [(p["t"], sent_at(p["t"]) - p["heard"]) for p in window]
    offered = devices / FRAME_SECONDS
    slope = _slope(backlog)  # packets/s the backlog grows by
    span = window[-1]["t"] - window[0]["t"]
    growth_s_per_device = slope * span / max(devices, 1) * FRAME_SECONDS
    first, last = window[0], window[-1]
    cpu = lambda key: round(100 * (last[key] - first[key]) / span, 1) if last[key] is not None and first[key] is not None else None  # noqa: E731
    gen_window = [r for r in progress if begin <= r["t"] <= end]
    late_p95 = statistics.median(r["late_p95_ms"] for r in gen_window) if gen_window else None
    lag_p50 = [p["lag_ms"]["p50"] for p in window if p["lag_ms"] and p["lag_ms"]["p50"] is not None]
    lag_p95 = [p["lag_ms"]["p95"] for p in window if p["lag_ms"] and p["lag_ms"]["p95"] is not None]
    dropped, lost = last["dropped"] - polls[0]["dropped"], last["lost"] - polls[0]["lost"]
    runs = last["runs"] - first["runs"]
    heard = last["heard"] - first["heard"]
    per_packet = lambda key: round(1e6 * (last[key] - first[key]) / heard) if heard and last[key] is not None else None  # noqa: E731
    generator_ok = late_p95 is not None and late_p95 <= args.max_generator_lateness_ms
    keeps_up = dropped == 0 and lost == 0 and growth_s_per_device <= args.max_growth
    return {
        "mode": mode, "devices": devices, "offered_packets_per_s": round(offered, 1),
        "heard_packets_per_s": round((last["heard"] - first["heard"]) / span, 1),
        "backlog_packets_start_end": [round(backlog[0][1]), round(backlog[-1][1])],
        "backlog_growth_packets_per_s": round(slope, 2),
        "backlog_growth_seconds_per_device": round(growth_s_per_device, 3),
        "pending_packets_median": statistics.median(p["pending"] for p in window),  # in the sessions' queues
        "backlog_packets_median": round(statistics.median(b for _, b in backlog)),  # anywhere: socket, Daphne, queues
        "dropped_packets": dropped, "lost_packets": lost,
        # left undecoded by design (noise-only sessions, overload) / decoded but too quiet for Silero
        "shed_packets": last["shed"] - first["shed"], "gated_packets": last["gated"] - first["gated"],
        "vad_lag_ms_p50_median": round(statistics.median(lag_p50), 1) if lag_p50 else None,
        "vad_lag_ms_p95_median": round(statistics.median(lag_p95), 1) if lag_p95 else None,
        "vad_lag_ms_p95_max": round(max(lag_p95), 1) if lag_p95 else None,
        "chunks_per_model_run": round((last["chunks"] - first["chunks"]) / runs, 2) if runs else None,
        "server_cpu_percent": {"event_loop_thread": cpu("server_cpu_main_s"), "other_threads": cpu("server_cpu_other_s")},
        # CPU per heard packet: what a packet costs whatever share of the machine the server got
        "server_cpu_us_per_packet": {"event_loop_thread": per_packet("server_cpu_main_s"),
                                     "other_threads": per_packet("server_cpu_other_s")},
        "generator_cpu_percent": cpu("generator_cpu_s"),
        "generator_lateness_p95_ms_median": late_p95, "generator_ok": generator_ok,
        "turns_started": last["turns"], "server_messages_to_devices": progress[-1]["received"],
        "keeps_up": keeps_up and generator_ok, "window_seconds": round(span, 1),
        "samples": [{"t": round(p["t"] - streaming_at, 2), "backlog": round(b, 1), "pending": p["pending"],
                     "lag_p95_ms": (p["lag_ms"] or {}).get("p95")} for p, (_, b) in zip(window, backlog)],
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="(internal) the load generator process")
    gen.add_argument("--ws", required=True)
    gen.add_argument("--devices", type=int, required=True)
    gen.add_argument("--duration", type=float, required=True)
    gen.add_argument("--frames", type=Path, required=True)
    gen.add_argument("--report-every", type=float, default=0.5)
    asker = sub.add_parser("ask", help="(internal) the asking device's process")
    asker.add_argument("--ws", required=True)
    asker.add_argument("--frames", type=Path, required=True)
    asker.add_argument("--wait", type=float, required=True)
    asker.add_argument("--duration", type=float, required=True)
    asker.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--modes", default="packet,session,cross_session", help="XIAOZHI_VAD_BATCHING values to measure")
    parser.add_argument("--steps", default="50,100,150,200,300,400", help="device counts, ascending")
    parser.add_argument("--refine", type=int, default=0,
                        help="after the first step that fails, bisect between it and the last pass down to this many devices")
    parser.add_argument("--duration", type=float, default=40.0, help="measuring window, seconds")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds of streaming before the window")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-growth", type=float, default=0.25,
                        help="backlog growth over the window that still counts as keeping up, seconds of audio per device")
    parser.add_argument("--max-generator-lateness-ms", type=float, default=20.0)
    parser.add_argument("--speech-gain", type=float, default=0.02)
    parser.add_argument("--noise-level", type=float, default=0.01)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--asking", type=int, default=0, choices=(0, 1), help="1: one device asks questions among the listeners")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server (repeatable), e.g. to compare a setting")
    parser.add_argument("--tag", default="", help="output file name part: listening-<tag>-<mode>.json")
    args = parser.parse_args()
    if args.command == "generate":
        asyncio.run(generate(args.ws, args.devices, args.duration, args.frames, args.report_every))
        return
    if args.command == "ask":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
        import django

        django.setup()
        asyncio.run(ask(args.ws, args.frames, args.wait, args.duration, args.gap))
        return

    workdir = Path(tempfile.mkdtemp(prefix="xiaozhi-listening-"))
    frames_path = workdir / "frames.bin"
    audio = prepare_frames(frames_path, args.speech_gain, args.noise_level)
    if args.asking:
        prepare_question(workdir / "question.bin")
    print(f"audio: {audio}", flush=True)
    steps = [int(s) for s in args.steps.split(",")]
    modes = args.modes.split(",")
    # The modes take turns at each device count, so each is measured under the same machine load.
    results = {mode: [] for mode in modes}
    passed: dict[str, int | None] = {mode: None for mode in modes}
    failed: dict[str, int | None] = {mode: None for mode in modes}

    def measure(mode: str, devices: int) -> None:
        load_before = load_average()
        step = run_step(mode, devices, args, frames_path)
        step["load_average_before"], step["load_average_after"] = load_before, load_average()
        results[mode].append(step)
        print(f"{mode:>13} {devices:4d} devices: keeps up={step['keeps_up']!s:5} heard {step['heard_packets_per_s']}/"
              f"{step['offered_packets_per_s']} pkt/s, backlog growth {step['backlog_growth_seconds_per_device']} s/device, "
              f"lag p50/p95 {step['vad_lag_ms_p50_median']}/{step['vad_lag_ms_p95_median']} ms, dropped {step['dropped_packets']}, "
              f"lost {step['lost_packets']}, server CPU loop/other {step['server_cpu_percent']['event_loop_thread']}/"
              f"{step['server_cpu_percent']['other_threads']} %, generator CPU {step['generator_cpu_percent']} % late p95 "
              f"{step['generator_lateness_p95_ms_median']} ms, CPU us/packet loop/other "
              f"{step['server_cpu_us_per_packet']['event_loop_thread']}/{step['server_cpu_us_per_packet']['other_threads']}, "
              f"chunks/run {step['chunks_per_model_run']}, shed {step['shed_packets']}, gated {step['gated_packets']}, "
              f"load {step['load_average_before']}", flush=True)
        if "asking" in step:
            print(f"{'':>13} asking device: {json.dumps({k: v for k, v in step['asking'].items() if k != 'ttfa_ms'})}", flush=True)
        if step["keeps_up"]:
            passed[mode] = max(passed[mode] or 0, devices)
        else:
            failed[mode] = min(failed[mode] or devices, devices)

    for devices in steps:
        for mode in modes:
            if failed[mode] is None:
                measure(mode, devices)
    for mode in modes:  # bisect between the last pass and the first failure
        while (args.refine and passed[mode] is not None and failed[mode] is not None
               and failed[mode] - passed[mode] > args.refine):
            measure(mode, (passed[mode] + failed[mode]) // 2)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        summary = {"mode": mode, "capacity_devices": passed[mode], "first_failure_devices": failed[mode], "audio": audio,
                   "settings": {k: getattr(args, k) for k in ("duration", "warmup", "max_batch", "max_growth",
                                                              "max_generator_lateness_ms", "asking", "server_env")},
                   "machine": {"cpus": os.cpu_count()}, "command": " ".join(sys.argv),
                   "steps": sorted(results[mode], key=lambda r: r["devices"])}
        out = args.output_dir / (f"listening-{args.tag}-{mode}.json" if args.tag else f"listening-{mode}.json")
        out.write_text(json.dumps(summary, indent=1))
        print(f"{mode}: keeps up with {passed[mode]} devices (first failure at {failed[mode]}) -> {out}", flush=True)

if __name__ == "__main__":
    main()

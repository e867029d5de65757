"""``manage.py loadtest``: many simulated devices against a xiaozhi-compatible server.

Thin: options -> ``loadtest`` (generator, playout, report). Utterances are synthesised and
Opus-encoded before the run so the generator spends its CPU on pacing, not encoding. Every run is
stored as a ``LoadTestRun`` (admin, with a TTFA chart) and exits 1 when a configured target is missed.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from loadtest.generator import Config, Run
from loadtest.report import Targets, build, table

DEFAULT_TEXTS = ["What is the capital of France?", "Tell me a joke.", "How far away is the moon?",
                 "What should I cook for dinner?"]


class Command(BaseCommand):
    help = "Load-test a xiaozhi-compatible server with simulated devices speaking the public protocol."

    def add_arguments(self, parser):
        parser.add_argument("--target", default="http://127.0.0.1:8000",
                            help="server base URL, OTA URL (…/ota/) or ws(s):// URL (skips OTA)")
        parser.add_argument("--spawn-server", choices=["bundled", "fake"],
                            help="start a local server (Daphne, temp SQLite) with this configuration and target it")
        parser.add_argument("--devices", type=int, default=1)
        parser.add_argument("--steps", help="comma-separated device counts run one after the other (e.g. "
                                            "50,100,200,400); stops at the first that misses a target (the ceiling)")
        parser.add_argument("--ramp-up", type=float, default=0.0, help="seconds over which the devices start")
        parser.add_argument("--sync-start", action="store_true",
                            help="connect every device first, then start their first turns together (ignores "
                                 "--ramp-up): simultaneous talkers, with a fairness section in the report")
        parser.add_argument("--stagger-ms", type=float, default=0.0,
                            help="with --sync-start: device i starts speaking i x this many ms after device 0, "
                                 "so the arrival order is known")
        parser.add_argument("--turns", type=int, default=None, help="turns per device (default 1 without --duration)")
        parser.add_argument("--duration", type=float, help="seconds; devices start no new turn after it")
        parser.add_argument("--mode", choices=["auto", "manual", "realtime"], default="auto", help="listen mode")
        parser.add_argument("--text", action="append", default=[], help="an utterance (repeatable), synthesised once")
        parser.add_argument("--wav", action="append", default=[], help="a 16-bit WAV utterance (repeatable)")
        parser.add_argument("--think-time", type=float, default=1.0, help="seconds between turns (±20%%)")
        parser.add_argument("--binary-version", type=int, choices=[1, 2, 3],
                            help="binary framing (default: what the OTA answer says, else 1)")
        parser.add_argument("--turn-timeout", type=float, default=60.0)
        parser.add_argument("--trailing-silence", type=float, default=3.0,
                            help="seconds of silence sent after speech in auto mode, as the open microphone does")
        parser.add_argument("--expect-audio-seconds", type=float,
                            help="answer audio expected per turn, to report received vs expected")
        parser.add_argument("--report", help="JSON report file (with --steps: one file per step, suffixed)")
        parser.add_argument("--target-ttfa-p95-ms", type=float)
        parser.add_argument("--max-error-rate", type=float)
        parser.add_argument("--max-underruns-per-minute", type=float)
        parser.add_argument("--no-store", action="store_true", help="do not store the run in the database")
        parser.add_argument("--quiet", action="store_true", help="no progress line")

    def handle(self, *args, **options):
        import logging

        for name in ("httpx", "websockets"):  # one line per request would drown the progress line
            logging.getLogger(name).setLevel(logging.WARNING)
        turns, duration = options["turns"], options["duration"]
        if turns is None and duration is None:
            turns = 1
        utterances = self.utterances(options)
        targets = Targets(options["target_ttfa_p95_ms"], options["max_error_rate"], options["max_underruns_per_minute"])
        counts = [int(n) for n in options["steps"].split(",")] if options["steps"] else [options["devices"]]
        if any(n < 1 for n in counts):
            raise CommandError("device counts must be positive")
        if options["stagger_ms"] < 0 or (options["stagger_ms"] and not options["sync_start"]):
            raise CommandError("--stagger-ms must be >= 0 and needs --sync-start")
        server = contextlib.nullcontext(options["target"])
        if options["spawn_server"]:
            from loadtest.server import local_server

            server = local_server(options["spawn_server"])
        results = []
        with server as target:
            for count in counts:
                config = Config(target=target, devices=count, ramp_up=options["ramp_up"], turns=turns, duration=duration,
                                mode=options["mode"], utterances=utterances, think_time=options["think_time"],
                                binary_version=options["binary_version"], turn_timeout=options["turn_timeout"],
                                trailing_silence=options["trailing_silence"], sync_start=options["sync_start"],
                                stagger_ms=options["stagger_ms"])
                settings = {"target": target, "spawn_server": options["spawn_server"], "devices": count,
                            "ramp_up": options["ramp_up"], "turns": turns, "duration": duration, "mode": options["mode"],
                            "texts": options["text"] or ([] if options["wav"] else DEFAULT_TEXTS), "wavs": options["wav"],
                            "think_time": options["think_time"], "binary_version": options["binary_version"],
                            "turn_timeout": options["turn_timeout"], "expect_audio_seconds": options["expect_audio_seconds"],
                            "sync_start": options["sync_start"], "stagger_ms": options["stagger_ms"]}
                report = self.run_once(config, settings, targets, options)
                path = options["report"]
                if path and len(counts) > 1:
                    p = Path(path)
                    path = str(p.with_name(f"{p.stem}-{count}{p.suffix}"))
                if path:
                    Path(path).write_text(json.dumps(report, indent=2))
                    self.stdout.write(f"report written to {path}")
                if not options["no_store"]:
                    from loadtest.models import LoadTestRun

                    run = LoadTestRun.from_report(target, report)
                    self.stdout.write(f"stored as load-test run #{run.pk}")
                results.append((count, report))
                if len(counts) > 1 and not report["passed"]:
                    break
        if len(counts) > 1:
            passed = [n for n, r in results if r["passed"]]
            crossed = next((n for n, r in results if not r["passed"]), None)
            self.stdout.write(f"ceiling: targets met up to {max(passed) if passed else 'none'} devices; "
                              + (f"missed at {crossed}" if crossed else f"not crossed up to {counts[-1]}"))
            return  # a step search is expected to cross the targets: its result is the ceiling, not a failure
        if not results[0][1]["passed"]:
            raise CommandError("load test missed its targets: " + ", ".join(
                k for k, v in results[0][1]["verdict"].items() if not v["passed"]))

    def utterances(self, options) -> list[list[bytes]]:
        from loadtest.management.commands.talk import wav_frames
        from loadtest.simulated_device import spoken_frames

        texts = options["text"] or ([] if options["wav"] else DEFAULT_TEXTS)
        started = time.monotonic()
        frames = [spoken_frames(t) for t in texts] + [wav_frames(w) for w in options["wav"]]
        self.stdout.write(f"{len(frames)} utterances encoded in {time.monotonic() - started:.1f} s "
                          f"({', '.join(f'{len(f) * 0.06:.1f}' for f in frames)} s of speech)")
        return frames

    def run_once(self, config: Config, settings: dict, targets: Targets, options) -> dict:
        run = Run(config)
        self.stdout.write(f"load test: {config.devices} devices -> {config.target}, mode {config.mode}, "
                          f"{'%s turns each' % config.turns if config.turns else '%s s' % config.duration}")

        async def main():
            task = asyncio.create_task(run.run())
            tty = sys.stderr.isatty()
            last = 0.0
            while not task.done():
                await asyncio.wait({task}, timeout=1.0)
                if options["quiet"]:
                    continue
                if tty:
                    sys.stderr.write("\r" + run.progress() + "\x1b[K")
                    sys.stderr.flush()
                elif time.monotonic() - last >= 5:
                    last = time.monotonic()
                    self.stderr.write(run.progress())
            if tty and not options["quiet"]:
                sys.stderr.write("\n")
            await task

        started = time.monotonic()
        asyncio.run(main())
        report = build(run.devices, run.turns, run.lateness_ms, settings, targets, time.monotonic() - started,
                       run.stalls)
        self.stdout.write(table(report))
        return report

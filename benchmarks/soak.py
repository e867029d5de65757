"""Soak: 50 devices holding conversations for an hour against a local server, watching for leaks.

Not throughput: each device speaks one turn every 20-30 s (``--think-time`` 25 s, +-20 %), so the
2-core machine is far from saturated and what grows over the hour is what leaks. The devices are
the load generator's (``loadtest.generator``, the same simulated firmware as the load test); the
server is ``loadtest.server.local_server`` (Daphne, its own temporary SQLite, fake models by
default). Every ``--sample-every`` seconds the server process's RSS and open descriptors (psutil),
its unfinished asyncio tasks and error counters (``/api/performance``), the connected devices gauge
(``/api/performance/websocket``) and the generator's turns, errors and TTFA since the previous
sample are written to the raw JSON (rewritten at each sample, so a run cut short keeps its figures).

The summary: RSS growth (mean of the last 10 minutes against the first 10 minutes after
``--warm-up``), errors (turns and devices that failed, and the server's error counters), turns done,
TTFA p50/p95 per sample and overall; the verdict: growth < 5 % and zero errors.

    python benchmarks/soak.py                        # 50 devices, 3600 s, fake models
    python benchmarks/soak.py --profile bundled      # the bundled models (needs ~2 GB and the CPU)
    python benchmarks/soak.py --duration 300 --devices 10 --warm-up 60 --window 60   # a quick check
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

MAX_RSS_GROWTH = 0.05
TEXTS = ["What is the capital of France?", "Tell me a joke.", "How far away is the moon?",
         "What should I cook for dinner?"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds; no new turn starts after it")
    parser.add_argument("--profile", choices=["fake", "bundled"], default="fake", help="the server's models")
    parser.add_argument("--think-time", type=float, default=25.0, help="seconds between a device's turns (+-20%%)")
    parser.add_argument("--ramp-up", type=float, default=60.0, help="seconds over which the devices connect")
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--warm-up", type=float, default=300.0, help="seconds left out of the RSS baseline")
    parser.add_argument("--window", type=float, default=600.0, help="seconds averaged at each end for RSS growth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", help="raw JSON (default benchmarks/results/soak-<profile>-<devices>.json)")
    return parser.parse_args(argv)


def _round(value):
    return None if value is None else round(value, 1)


class Sampler:
    """Reads the server every ``every`` seconds while the run goes on."""

    def __init__(self, base: str, pid: int, run, every: float, write):
        import psutil

        self.base, self.run, self.every, self.write = base, run, every, write
        self.process = psutil.Process(pid)
        self.key = f"{socket.gethostname()}:{pid}"  # how the server names itself in its figures
        self.samples: list[dict] = []
        self._turns_seen = 0

    async def sample(self, client) -> dict:
        from voice.percentile import percentile

        perf = (await client.get(f"{self.base}/api/performance/")).json()
        ws = (await client.get(f"{self.base}/api/performance/websocket/")).json()
        own = perf["processes"].get(self.key, {})  # with REDIS_URL other processes report there too
        new = self.run.turns[self._turns_seen:]
        self._turns_seen += len(new)
        ttfa = [t.get("ttfa_ms") for t in new]
        row = {
            "at_s": round(self.run.elapsed(), 1),
            "rss_bytes": self.process.memory_info().rss,
            "open_fds": self.process.num_fds(),
            "asyncio_tasks": own.get("asyncio_tasks"),
            "threads": self.process.num_threads(),
            "connected_devices": ws["per_process"].get(self.key),
            "connections": ws["connections"],
            "server_errors": perf["errors"],
            "turns": len(new),
            "turn_errors": sum(1 for t in new if t["error"]),
            "turns_total": sum(1 for t in self.run.turns if not t["error"]),
            "errors_total": sum(1 for t in self.run.turns if t["error"]) + sum(1 for d in self.run.devices if d["error"]),
            "ttfa_p50_ms": _round(percentile(ttfa, 0.5)), "ttfa_p95_ms": _round(percentile(ttfa, 0.95)),
        }
        self.samples.append(row)
        return row

    async def loop(self, done: asyncio.Event) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=20) as client:
            while True:
                try:
                    row = await self.sample(client)
                    print(f"[{row['at_s']:7.1f}s] rss {row['rss_bytes'] / 2**20:6.1f} MB fds {row['open_fds']} "
                          f"tasks {row['asyncio_tasks']} devices {row['connected_devices']} turns {row['turns_total']} "
                          f"errors {row['errors_total']} ttfa p50 {row['ttfa_p50_ms']} p95 {row['ttfa_p95_ms']}", flush=True)
                except Exception as exc:  # noqa: BLE001 - a missed sample is reported, not fatal
                    self.samples.append({"at_s": round(self.run.elapsed(), 1), "sample_error": repr(exc)[:200]})
                self.write()
                try:
                    await asyncio.wait_for(done.wait(), self.every)
                    return
                except asyncio.TimeoutError:
                    pass


def summarize(samples: list[dict], turns: list[dict], devices: list[dict], warm_up: float, window: float) -> dict:
    from voice.percentile import percentile

    good = [s for s in samples if "rss_bytes" in s and not s.get("after_close")]
    closed = next((s for s in samples if s.get("after_close")), None)
    after = [s for s in good if s["at_s"] >= warm_up]
    first = [s["rss_bytes"] for s in after if s["at_s"] < warm_up + window]
    end = after[-1]["at_s"] if after else 0
    last = [s["rss_bytes"] for s in after if s["at_s"] > end - window]
    growth = None
    if first and last and after[-1]["at_s"] - warm_up >= 2 * window:
        growth = (sum(last) / len(last)) / (sum(first) / len(first)) - 1
    errors: dict[str, int] = {}
    for row in [*turns, *devices]:
        if row.get("error"):
            errors[row["error"]] = errors.get(row["error"], 0) + 1
    server_errors = good[-1]["server_errors"] if good else {}
    ttfa = [t.get("ttfa_ms") for t in turns]
    summary = {
        "rss_first_window_mb": round(sum(first) / len(first) / 2**20, 1) if first else None,
        "rss_last_window_mb": round(sum(last) / len(last) / 2**20, 1) if last else None,
        "rss_growth_percent": None if growth is None else round(100 * growth, 2),
        "rss_min_mb": round(min(s["rss_bytes"] for s in good) / 2**20, 1) if good else None,
        "rss_max_mb": round(max(s["rss_bytes"] for s in good) / 2**20, 1) if good else None,
        "open_fds_first_last": [after[0]["open_fds"], after[-1]["open_fds"]] if after else None,
        "asyncio_tasks_first_last": [after[0]["asyncio_tasks"], after[-1]["asyncio_tasks"]] if after else None,
        "after_close": None if closed is None else {k: closed[k] for k in ("connected_devices", "asyncio_tasks", "open_fds")},
        "turns_done": sum(1 for t in turns if not t.get("error")),
        "errors": errors, "error_count": sum(errors.values()),
        "server_errors": server_errors, "server_error_count": sum(server_errors.values()),
        "missed_samples": sum(1 for s in samples if "sample_error" in s),
        "ttfa_p50_ms": _round(percentile(ttfa, 0.5)), "ttfa_p95_ms": _round(percentile(ttfa, 0.95)),
    }
    summary["passed"] = (growth is not None and growth < MAX_RSS_GROWTH and summary["error_count"] == 0
                         and summary["server_error_count"] == 0)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    # A soak stopped early (kill <pid>) still stops its server; the JSON already holds every sample.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import django

    django.setup()
    for name in ("httpx", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from loadtest.generator import Config, Run
    from loadtest.server import local_server
    from loadtest.simulated_device import spoken_frames

    report_path = Path(args.report or ROOT / "benchmarks" / "results" / f"soak-{args.profile}-{args.devices}.json")
    utterances = [spoken_frames(t) for t in TEXTS]
    server: dict = {}
    config = Config(devices=args.devices, ramp_up=args.ramp_up, turns=None, duration=args.duration,
                    utterances=utterances, think_time=args.think_time, seed=args.seed)
    run = Run(config)
    settings = {k: v for k, v in vars(args).items() if k != "report"}
    state: dict = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": False}

    def write(sampler=None) -> None:
        samples = sampler.samples if sampler else []
        report = {"benchmark": "soak", "settings": settings, **state, "server_pid": server.get("pid"),
                  "summary": summarize(samples, run.turns, run.devices, args.warm_up, args.window),
                  # every turn is in the samples' figures; only the failed ones are kept whole (an
                  # hour is some 7,000 turns)
                  "samples": samples, "turns_with_errors": [t for t in run.turns if t["error"]],
                  "devices": run.devices}
        tmp = report_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(report_path)

    def started(process, workdir) -> None:
        server.update(pid=process.pid, workdir=str(workdir))

    with local_server(args.profile, on_start=started) as base:
        config.target = base
        print(f"soak: {args.devices} devices -> {base} ({args.profile}, server pid {server['pid']}), "
              f"{args.duration:.0f} s, a turn every ~{args.think_time:.0f} s; raw figures in {report_path}", flush=True)
        sampler = Sampler(base, server["pid"], run, args.sample_every, lambda: write(sampler))

        async def soak():
            done = asyncio.Event()
            sampling = asyncio.create_task(sampler.loop(done))
            try:
                await run.run()
            finally:
                done.set()
                await sampling
            # Every device has closed: what is still held now (devices, tasks, descriptors) is left over.
            import httpx

            await asyncio.sleep(5)
            async with httpx.AsyncClient(timeout=20) as client:
                row = await sampler.sample(client)
            row["after_close"] = True
            print(f"after close: devices {row['connected_devices']} tasks {row['asyncio_tasks']} "
                  f"fds {row['open_fds']} rss {row['rss_bytes'] / 2**20:.1f} MB", flush=True)

        asyncio.run(soak())
        state["finished"] = True
        state["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write(sampler)
    summary = json.loads(report_path.read_text())["summary"]
    print(json.dumps(summary, indent=2))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

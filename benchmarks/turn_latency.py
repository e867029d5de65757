"""Turn latency on this machine: N spoken turns against a real Daphne with the bundled models.

Measures, from the device's side, the time from its last speech frame to the first audio frame it
receives (TTFA), and splits it by stage with the marks the server stored for each turn. The
server's own share is TTFA minus model time (ASR run, LLM time to its first speakable clause, TTS
time to first audio): everything the server adds on top of the models.

    python benchmarks/turn_latency.py --turns 20 --mode manual
    python benchmarks/turn_latency.py --turns 20 --mode auto     # adds the VAD's end-of-speech wait

Plain turns with and without tools (issue #11), interleaved turn by turn on servers started side
by side, so a shared machine's load falls on every variant alike:

    git archive <commit before tools> | tar -x -C /tmp/xiaozhi-before
    python benchmarks/turn_latency.py --compare-tools --turns 12 --before-root /tmp/xiaozhi-before

    # before/after on a shared, noisy machine: a second server with the baseline's settings, the
    # turns alternating between the two so both see the same load (one report, both summaries)
    python benchmarks/turn_latency.py --turns 20 --mode auto --baseline-env XIAOZHI_VAD_PAUSE_MS=0
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voice.percentile import percentile  # noqa: E402  (after the path is set)

QUESTIONS = [
    "What is the capital of France?", "Tell me a joke.", "What is the weather like today?",
    "How far away is the moon?", "Can you recommend a good book?", "What time is it?",
    "Who wrote Romeo and Juliet?", "How do I make a cup of tea?", "What is your name?",
    "Play some music please.", "What is two plus two?", "Why is the sky blue?",
    "Tell me something interesting.", "How are you today?", "What should I cook for dinner?",
    "Turn on the kitchen light.", "What is the tallest mountain?", "Say good night.",
    "How many legs does a spider have?", "What is the speed of light?",
]


# Questions that call no tool (the tool benchmark's plain set is separate): plain-turn TTFA only.
PLAIN = [q for q in QUESTIONS if q not in (
    "What time is it?", "Say good night.", "Turn on the kitchen light.", "Play some music please.")]


def prepare(prefix: str) -> tuple[dict, dict]:
    """The server's environment (a temporary SQLite, never the developer's MySQL) and every
    question as 16 kHz Opus frames, synthesised here once so no turn waits for it."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ, SQLITE_PATH=str(workdir / "db.sqlite3"), XIAOZHI_DATA_DIR=str(workdir))
    env.pop("DATABASE_URL", None)
    os.environ.update({k: env[k] for k in ("SQLITE_PATH", "XIAOZHI_DATA_DIR")})
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    os.environ["XIAOZHI_PRELOAD_MODELS"] = "false"  # this process only synthesises the questions
    import django

    django.setup()
    from loadtest.simulated_device import spoken_frames

    return env, {q: spoken_frames(q) for q in QUESTIONS}


def start_server(stack: contextlib.ExitStack, env: dict, root: Path = ROOT, migrate: bool = True) -> str:
    """A server for the benchmark (``loadtest.server.server_process``), stopped when ``stack``
    closes; its log beside its database. Returns its base URL."""
    from loadtest.server import server_process

    log_path = Path(tempfile.mkstemp(prefix="xiaozhi-bench-server-", suffix=".log")[1])
    return stack.enter_context(server_process(env, log_path, migrate=migrate, root=root)).base


async def run_turns(base: str, turns: int, mode: str, say) -> tuple[list, str]:
    from loadtest.simulated_device import SimulatedDevice

    device = SimulatedDevice()
    await device.ota(f"{base}/xiaozhi/ota/")
    await device.connect()
    results = []
    for i in range(turns):
        result = await device.turn(say(QUESTIONS[i % len(QUESTIONS)]), mode=mode, timeout=60)
        results.append(result)
        await asyncio.sleep(0.3)
    await device.close()
    return results, device.device_id


async def run_alternating(bases: list[str], turns: int, mode: str, say) -> tuple[list[list], list[str]]:
    """The same questions on each server, turn by turn, the order swapped every turn."""
    from loadtest.simulated_device import SimulatedDevice

    devices = []
    for base in bases:
        device = SimulatedDevice()
        await device.ota(f"{base}/xiaozhi/ota/")
        await device.connect()
        devices.append(device)
    results: list[list] = [[] for _ in bases]
    for i in range(turns):
        order = range(len(bases)) if i % 2 == 0 else reversed(range(len(bases)))
        for k in order:
            results[k].append(await devices[k].turn(say(QUESTIONS[i % len(QUESTIONS)]), mode=mode, timeout=60))
            await asyncio.sleep(0.3)
    for device in devices:
        await device.close()
    return results, [d.device_id for d in devices]


def main_ab(args, env, speech) -> None:
    overrides = dict(item.split("=", 1) for item in args.baseline_env)
    with contextlib.ExitStack() as stack:
        base_c = start_server(stack, env)
        base_b = start_server(stack, {**env, **overrides}, migrate=False)  # same database, own device
        (res_b, res_c), (id_b, id_c) = asyncio.run(run_alternating([base_b, base_c], args.turns, args.mode, speech.__getitem__))
    from devices.models import Turn

    reports = {}
    for name, results, device_id in (("baseline", res_b, id_b), ("candidate", res_c, id_c)):
        rows = list(Turn.objects.filter(device__device_id=device_id).order_by("id"))
        reports[name] = summarise(results, rows, args)
    ratio = {}
    for key in ("ttfa_ms", "stt_ms"):
        b, c = reports["baseline"]["summary"][key]["median"], reports["candidate"]["summary"][key]["median"]
        ratio[key] = round(c / b, 3) if b and c else None
    report = {"mode": args.mode, "baseline_env": overrides, "candidate_env": "defaults", "ratio_candidate_to_baseline": ratio,
              **reports}
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"turn_latency-{args.mode}-ab.json")
    out.write_text(json.dumps(report, indent=2))
    for name in ("baseline", "candidate"):
        print(f"\n== {name} {overrides if name == 'baseline' else '(defaults)'}")
        print_table(reports[name])
    print(f"\nmedian ratios candidate/baseline: {ratio}\nwritten to {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--mode", choices=["auto", "manual"], default="manual")
    parser.add_argument("--output", help="JSON results file (default: benchmarks/results/turn_latency-<mode>.json)")
    parser.add_argument("--compare-tools", action="store_true",
                        help="plain turns: tools on vs XIAOZHI_TOOLS_ENABLED=false (vs --before-root), interleaved")
    parser.add_argument("--before-root", help="with --compare-tools: a checkout of the code before tools, run as a third server")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="also run a baseline server with these environment overrides, turns alternating")
    args = parser.parse_args()
    if args.compare_tools:
        compare_tools(args)
        return

    env, speech = prepare("xiaozhi-bench-")
    if args.baseline_env:
        return main_ab(args, env, speech)
    with contextlib.ExitStack() as stack:
        base = start_server(stack, env)
        results, device_id = asyncio.run(run_turns(base, args.turns, args.mode, speech.__getitem__))

    from devices.models import Turn

    rows = list(Turn.objects.filter(device__device_id=device_id).order_by("id"))
    report = summarise(results, rows, args)
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"turn_latency-{args.mode}.json")
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwritten to {out}")


def compare_tools(args) -> None:
    """TTFA of plain turns on servers that differ only in tools, one device each, turn i of every
    variant asked back to back before turn i + 1 of any."""
    env, speech = prepare("xiaozhi-bench-tools-")
    variants = [("tools on", {}, ROOT), ("tools off (XIAOZHI_TOOLS_ENABLED=false)", {"XIAOZHI_TOOLS_ENABLED": "false"}, ROOT)]
    if args.before_root:
        variants.append(("code before tools", {}, Path(args.before_root)))
    servers = []
    with contextlib.ExitStack() as stack:
        for name, extra, root in variants:
            workdir = Path(tempfile.mkdtemp(prefix="xiaozhi-bench-variant-"))
            venv = dict(env, SQLITE_PATH=str(workdir / "db.sqlite3"), XIAOZHI_DATA_DIR=str(workdir), **extra)
            servers.append((name, start_server(stack, venv, root), workdir / "db.sqlite3"))
        results = asyncio.run(_interleaved([base for _, base, _ in servers], args.turns, args.mode, speech))
    report = {"machine": f"{os.cpu_count()} cores", "mode": args.mode, "turns_each": args.turns,
              "questions": PLAIN[:args.turns], "variants": {}}
    for (name, _, db), (turns, device_id) in zip(servers, results):
        rows = _rows(db, device_id)
        ttfa = [t.first_audio_ms for t in turns if t.first_audio_ms is not None]
        report["variants"][name] = {
            "answered": len(ttfa), "ttfa_ms": {"median": round(statistics.median(ttfa), 1) if ttfa else None,
                                              "p95": round(percentile(ttfa, 0.95), 1) if ttfa else None},
            "llm_first_token_ms_median": _median([r.get("llm_first_token_ms") for r in rows]),
            "turns_that_called_a_tool": sum(1 for r in rows if r.get("tool_calls") not in (None, "[]")),
            "per_turn_ttfa_ms": [None if t.first_audio_ms is None else round(t.first_audio_ms, 1) for t in turns],
        }
    medians = {name: v["ttfa_ms"]["median"] for name, v in report["variants"].items()}
    on = medians["tools on"]
    report["ratio_tools_on_vs"] = {name: round(on / m, 3) for name, m in medians.items() if name != "tools on" and m}
    # The same question asked seconds apart on each server: the median of the per-turn ratios is
    # steadier than the ratio of medians when the machine's load drifts.
    own = report["variants"]["tools on"]["per_turn_ttfa_ms"]
    report["paired_ratio_median_tools_on_vs"] = {
        name: _median([a / b for a, b in zip(own, v["per_turn_ttfa_ms"]) if a and b])
        for name, v in report["variants"].items() if name != "tools on"}
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"turn_latency-tools-{args.mode}.json")
    out.write_text(json.dumps(report, indent=2))
    for name, v in report["variants"].items():
        print(f"{name:<44} TTFA median {v['ttfa_ms']['median']} ms, p95 {v['ttfa_ms']['p95']} ms, "
              f"answered {v['answered']}/{args.turns}, tool calls {v['turns_that_called_a_tool']}")
    print(f"ratio of medians (tools on / other): {report['ratio_tools_on_vs']}; "
          f"median of paired ratios: {report['paired_ratio_median_tools_on_vs']}\nwritten to {out}")


async def _interleaved(bases: list[str], turns: int, mode: str, speech: dict) -> list[tuple[list, str]]:
    from loadtest.simulated_device import SimulatedDevice

    devices = []
    for base in bases:
        device = SimulatedDevice()  # answers MCP like the firmware: the "tools on" server lists its tools
        await device.ota(f"{base}/xiaozhi/ota/")
        await device.connect()
        devices.append(device)
    await asyncio.sleep(10)  # MCP listing and the router's prefill_tools happen off the turns' path
    results: list[list] = [[] for _ in devices]
    for i in range(turns):
        for device, out in zip(devices, results):
            out.append(await device.turn(speech[PLAIN[i % len(PLAIN)]], mode=mode, timeout=60))
            await asyncio.sleep(0.3)
    for device in devices:
        await device.close()
    return [(out, device.device_id) for out, device in zip(results, devices)]


def _rows(db: Path, device_id: str) -> list[dict]:
    import sqlite3

    time.sleep(1)  # the last turn's row is written just after its reply
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT t.* FROM devices_turn t JOIN devices_device d ON d.id = t.device_id WHERE d.device_id = ? "
            "ORDER BY t.id", (device_id,))]


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(results, rows, args) -> dict:
    turns = []
    for result, row in zip(results, rows):
        t = row.timings or {}
        model = sum(t.get(k, 0) for k in ("asr_model_ms", "llm_first_sentence_model_ms", "tts_first_audio_model_ms"))
        turns.append({
            "question": result.stt, "ttfa_ms": result.first_audio_ms, "stt_ms": result.stt_ms,
            "tts_start_ms": result.tts_start_ms, "audio_seconds": len(result.audio) * 0.06,
            "server_asr_done_ms": row.asr_done_ms, "server_llm_first_token_ms": row.llm_first_token_ms,
            "server_first_sentence_ms": row.first_sentence_ms, "server_tts_first_audio_ms": row.tts_first_audio_ms,
            "server_first_audio_sent_ms": row.first_audio_sent_ms, "model_ms": round(model, 1),
            "server_share_ms": None if result.first_audio_ms is None else round(result.first_audio_ms - model, 1),
            **t,
        })
    def stat(key):
        values = [t[key] for t in turns if t.get(key) is not None]
        return {"median": round(statistics.median(values), 1) if values else None,
                "p95": round(percentile(values, 0.95), 1) if values else None}
    keys = ["stt_ms", "tts_start_ms", "ttfa_ms", "server_asr_done_ms", "server_llm_first_token_ms",
            "server_first_sentence_ms", "server_tts_first_audio_ms", "server_first_audio_sent_ms",
            "asr_model_ms", "llm_first_token_model_ms", "llm_first_sentence_model_ms", "tts_first_audio_model_ms",
            "model_ms", "server_share_ms"]
    return {
        "machine": f"{os.cpu_count()} cores", "mode": args.mode, "turns": len(turns),
        "answered": sum(1 for t in turns if t["ttfa_ms"] is not None),
        "summary": {k: stat(k) for k in keys}, "per_turn": turns,
    }


def print_table(report):
    print(f"{report['turns']} turns, mode {report['mode']}, answered {report['answered']}")
    print(f"{'figure (ms after the last speech frame)':<44} {'median':>8} {'p95':>8}")
    for key, value in report["summary"].items():
        median = "-" if value["median"] is None else f"{value['median']:.0f}"
        p95 = "-" if value["p95"] is None else f"{value['p95']:.0f}"
        print(f"{key:<44} {median:>8} {p95:>8}")


if __name__ == "__main__":
    main()

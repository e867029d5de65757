"""Cold start: is the first turn after the server starts as fast as the rest?

Starts a fresh Daphne (the same command `make run` uses) several times. After each start, as soon
as /health answers, a new simulated device asks one question per connection for ``--turns`` turns
(a new connection each time, so no turn profits from an earlier turn's dialogue history). The
questions rotate between restarts, so every question is asked first about as often as it is asked
later, and the comparison is not skewed by one question's longer answer.

Reports the TTFA (last speech frame -> first audio frame) of the first turn after each start, the
median of every later turn, and their ratio; the target is a first turn within 20 % of the median.

    python benchmarks/cold_start.py --starts 5 --turns 6
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.turn_latency import QUESTIONS, prepare, start_server  # noqa: E402


async def turns_after_start(base: str, questions: list[str], mode: str, say) -> list[float | None]:
    from loadtest.simulated_device import SimulatedDevice

    ttfa = []
    for question in questions:
        device = SimulatedDevice()
        await device.ota(f"{base}/xiaozhi/ota/")
        await device.connect()
        result = await device.turn(say(question), mode=mode, timeout=60)
        ttfa.append(result.first_audio_ms)
        await device.close()
        await asyncio.sleep(0.3)
    return ttfa


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="server starts")
    parser.add_argument("--turns", type=int, default=6, help="turns after each start")
    parser.add_argument("--mode", choices=["auto", "manual"], default="manual")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "cold_start.json"))
    args = parser.parse_args()

    env, speech = prepare("xiaozhi-cold-")
    runs = []
    for start in range(args.starts):
        questions = [QUESTIONS[(start * args.turns + i) % len(QUESTIONS)] for i in range(args.turns)]
        began = time.monotonic()
        process, base = start_server(env)
        ready = time.monotonic() - began
        try:
            ttfa = asyncio.run(turns_after_start(base, questions, args.mode, speech.__getitem__))
        finally:
            process.terminate()
            process.wait(10)
        runs.append({"ready_seconds": round(ready, 2), "questions": questions, "ttfa_ms": ttfa})
        print(f"start {start + 1}: ready in {ready:.1f} s, TTFA {', '.join('-' if t is None else f'{t:.0f}' for t in ttfa)} ms")

    first = [r["ttfa_ms"][0] for r in runs if r["ttfa_ms"][0] is not None]
    later = [t for r in runs for t in r["ttfa_ms"][1:] if t is not None]
    report = {
        "machine": f"{os.cpu_count()} cores", "mode": args.mode, "starts": args.starts, "turns_per_start": args.turns,
        "first_turn_ttfa_ms": {"median": round(statistics.median(first), 1), "values": [round(v, 1) for v in first]},
        "later_turns_ttfa_ms": {"median": round(statistics.median(later), 1), "count": len(later)},
        "ratio_first_to_later_median": round(statistics.median(first) / statistics.median(later), 3),
        "ready_seconds_median": round(statistics.median(r["ready_seconds"] for r in runs), 2),
        "runs": runs,
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"first turn after start: median {report['first_turn_ttfa_ms']['median']:.0f} ms; "
          f"later turns: median {report['later_turns_ttfa_ms']['median']:.0f} ms; "
          f"ratio {report['ratio_first_to_later_median']:.2f}; server ready in {report['ready_seconds_median']:.1f} s")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

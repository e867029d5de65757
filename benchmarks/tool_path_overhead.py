"""What the tool path adds to a plain turn's LLM leg, without sockets, ASR or TTS: the time to the
first text delta of the reply, through the LLM service as the turn calls it, (a) with tools off
(``reply_stream`` without tools: the path before issue #11) and (b) through the tool loop with the
firmware's tools and the server's (``ToolLoop.reply``), the same plain question one after the other,
alternating which goes first. On the bundled SmolLM2 the difference is the router's vocabulary gate
and the loop's bookkeeping; the end-to-end TTFA comparison is ``turn_latency.py --compare-tools``.

    python benchmarks/tool_path_overhead.py --rounds 2     # -> results/tool_path_overhead.json
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
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")


async def first_delta(stream) -> float:
    started = time.perf_counter()
    try:
        async for item in stream:
            if isinstance(item, str) and item:
                return (time.perf_counter() - started) * 1000
    finally:
        await stream.aclose()
    return float("nan")


async def measure(llm_name: str, rounds: int) -> dict:
    from benchmarks.turn_latency import PLAIN
    from voice.conf import service_limits
    from voice.pipeline.tool_loop import ToolLoop, service_stream
    from voice.tools.model import Tool
    from voice.tools.server import server_tools
    from voice.tools.toolset import Toolset
    from voice.mcp.firmware import FIRMWARE_TOOLS
    from voice.workers.local import LocalService

    service = LocalService(service_limits("llm"))
    device_tools = [Tool(t["name"], t["description"], t["inputSchema"]) for t in FIRMWARE_TOOLS]
    toolset = Toolset(device_tools, server_tools())
    await service.call("prefill_tools", llm_name, toolset.specs())  # as the session does after the hello
    system = {"role": "system", "content": __import__("django.conf").conf.settings.XIAOZHI_SYSTEM_PROMPT}
    plain, tools = [], []
    for r in range(rounds + 1):  # round 0 warms the chat context's cache for every question
        for i, question in enumerate(PLAIN):
            messages = [system, {"role": "user", "content": question}]
            runs = [("plain", lambda: service.stream("reply_stream", llm_name, messages, None, None)),
                    ("tools", lambda: ToolLoop(toolset, service_stream(service, llm_name)).reply(messages))]
            if (i + r) % 2:
                runs.reverse()
            for kind, make in runs:
                ms = await first_delta(make())
                if r:
                    (plain if kind == "plain" else tools).append(ms)
    service.shutdown()
    median_plain, median_tools = statistics.median(plain), statistics.median(tools)
    return {"llm": llm_name, "questions": len(PLAIN), "rounds": rounds,
            "first_delta_ms": {"tools_off": {"median": round(median_plain, 1)},
                               "tool_loop": {"median": round(median_tools, 1)}},
            "median_difference_ms": round(median_tools - median_plain, 1),
            "median_of_paired_differences_ms": round(statistics.median(t - p for t, p in zip(tools, plain)), 1),
            "ratio": round(median_tools / median_plain, 3), "tools_off_ms": [round(v, 1) for v in plain],
            "tool_loop_ms": [round(v, 1) for v in tools]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "tool_path_overhead.json"))
    args = parser.parse_args()
    import django

    django.setup()
    report = asyncio.run(measure(args.llm, args.rounds))
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("tools_off_ms", "tool_loop_ms")}, indent=2))


if __name__ == "__main__":
    main()

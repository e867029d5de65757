"""Tool calling on the bundled default LLM (SmolLM2-135M with its grammar-constrained router).

Measures, on the model alone (no sockets, no ASR/TTS):
  1. tool requests: the fraction of 20 varied requests (volume, brightness, status, time) whose
     decision is the right tool with the right arguments;
  2. plain questions: the fraction of 20 that wrongly call a tool;
  3. factual questions: the fraction of 20 simple ones answered correctly (a keyword check): "now"
     (the settings' default prompt, the provider's greedy decoding), "before" (the previous prompt
     with its "Xiaozhi" persona, sampled at 0.3 as before), and each change alone (sampled runs
     vary by about +-10 points between runs);
  4. two held-out sets of 10 tool requests in new words and 10 plain questions that share words with
     a tool ("What is the volume of the Pacific Ocean?"): the first, written after tuning, showed
     such questions calling a tool 90 % of the time and led to the router's near-miss examples; the
     second was written after that and never tuned on;
  5. the tool decision's cost on a plain turn: ms of ``decide()`` per plain question (the router
     runs before the reply; the reply itself is unchanged). Words that touch no tool's vocabulary
     skip the model entirely (0 ms); the figure is over all 20 plain questions.

The tools are the firmware's (voice.mcp.firmware, as a device lists them) plus the server's own.

    python benchmarks/tool_calling.py            # writes benchmarks/results/tool_calling.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

VOL, BRI, STATUS, TIME = "self_audio_speaker_set_volume", "self_screen_set_brightness", "self_get_device_status", "get_time"
TOOL_REQUESTS = [
    ("Set the volume to thirty.", VOL, {"volume": 30}),
    ("Turn the volume up to 80.", VOL, {"volume": 80}),
    ("Volume 20, please.", VOL, {"volume": 20}),
    ("Can you change the volume to 65?", VOL, {"volume": 65}),
    ("Make the speaker louder, set it to 90.", VOL, {"volume": 90}),
    ("Lower the volume to 10.", VOL, {"volume": 10}),
    ("Set the brightness to 50.", BRI, {"brightness": 50}),
    ("Make the screen brighter, 90 percent.", BRI, {"brightness": 90}),
    ("Dim the screen to 10.", BRI, {"brightness": 10}),
    ("Screen brightness to 75 please.", BRI, {"brightness": 75}),
    ("Please set the display brightness to 30.", BRI, {"brightness": 30}),
    ("What is the volume now?", STATUS, {}),
    ("How loud is it right now?", STATUS, {}),
    ("What's the battery level?", STATUS, {}),
    ("Tell me the device status.", STATUS, {}),
    ("How bright is the screen?", STATUS, {}),
    ("What time is it?", TIME, {}),
    ("What's the time now?", TIME, {}),
    ("What day is it today?", TIME, {}),
    ("Can you tell me the date?", TIME, {}),
]
PLAIN_QUESTIONS = [
    "What is the capital of France?", "What is two plus two?", "Tell me a joke.", "Who wrote Hamlet?",
    "How are you today?", "Why is the sky blue?", "What is your name?", "Can you recommend a good book?",
    "How many legs does a spider have?", "What is the largest ocean?", "Tell me something interesting.",
    "What do cats eat?", "Who was Albert Einstein?", "What is the boiling point of water?", "Thank you very much.",
    "What color is grass?", "How do I make tea?", "What is the tallest mountain?", "Do you like music?",
    "Where is Japan?",
]
# Written after the router's examples were tuned, and not used to tune them: plain questions that share
# words with a tool (so they pass the vocabulary gate and the model decides), and requests in new words.
HELD_OUT_PLAIN = [
    "What is the volume of the Pacific Ocean?", "What time does the sun set in winter?", "How bright is the sun?",
    "Is too much screen time bad for children?", "How long does a phone battery last?", "What is a speaker of the house?",
    "What is the status of women in history?", "Why do we have time zones?", "What date is Christmas?",
    "How do I say goodbye in French?",
]
HELD_OUT_TOOL = [
    ("Could you put the volume at 45?", VOL, {"volume": 45}), ("I want the volume at 5.", VOL, {"volume": 5}),
    ("Brightness down to 15.", BRI, {"brightness": 15}), ("Set screen brightness to 100.", BRI, {"brightness": 100}),
    ("How much battery do I have?", STATUS, {}), ("What's the current volume level?", STATUS, {}),
    ("Do you know what time it is?", TIME, {}), ("What is today's date?", TIME, {}),
    ("Speaker volume 60.", VOL, {"volume": 60}), ("Is the battery low?", STATUS, {}),
]
# Written after NEAR_MISSES were added in answer to the first held-out set, and never tuned on.
HELD_OUT_2_PLAIN = [
    "How loud is a jet engine?", "What is the brightest star in the sky?", "What time zone is London in?",
    "Who invented the loudspeaker?", "What is inside a car battery?", "How do I end a letter politely?",
    "What day comes after Monday?", "Can a high volume of music hurt your ears?", "What does status quo mean?",
    "Why do screens make it hard to sleep?",
]
HELD_OUT_2_TOOL = [
    ("Put the volume at seventy.", VOL, {"volume": 70}), ("Volume to 25 please.", VOL, {"volume": 25}),
    ("Change the screen brightness to 60.", BRI, {"brightness": 60}), ("Make the display dimmer, 20.", BRI, {"brightness": 20}),
    ("What is my battery at?", STATUS, {}), ("Tell me the time.", TIME, {}), ("What's the date today?", TIME, {}),
    ("How loud is the volume right now?", STATUS, {}), ("Set brightness 85.", BRI, {"brightness": 85}),
    ("Lower the volume to 35.", VOL, {"volume": 35}),
]
FACTUAL = [
    ("What is the capital of France?", ["paris"]), ("What is two plus two?", ["four", "4"]),
    ("What is the capital of Japan?", ["tokyo"]), ("How many days are in a week?", ["seven", "7"]),
    ("What color is the sky on a clear day?", ["blue"]), ("What is the largest planet in our solar system?", ["jupiter"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]), ("What is the freezing point of water in Celsius?", ["zero", "0"]),
    ("How many legs does a dog have?", ["four", "4"]), ("What is the capital of Italy?", ["rome"]),
    ("What is three plus five?", ["eight", "8"]), ("What planet do we live on?", ["earth"]),
    ("What is the opposite of hot?", ["cold"]), ("How many hours are in a day?", ["24", "twenty-four", "twenty four"]),
    ("What animal says moo?", ["cow"]), ("What is the capital of Germany?", ["berlin"]),
    ("What color are bananas?", ["yellow"]), ("How many months are in a year?", ["twelve", "12"]),
    ("What do bees make?", ["honey"]), ("What is ten minus three?", ["seven", "7"]),
]
PREVIOUS_TEMPERATURE = 0.3  # SmolLM2's sampling temperature before this change (now greedy)
PREVIOUS_PROMPT = "You are Xiaozhi, a friendly voice assistant. Always answer in English, in one or two short sentences."


def toolset():
    from voice.mcp.firmware import FIRMWARE_TOOLS
    from voice.tools.model import Tool
    from voice.tools.server import server_tools
    from voice.tools.toolset import Toolset

    # As a device sends them (the firmware's own descriptions and schemas).
    device = [Tool(t["name"], t["description"], t["inputSchema"]) for t in FIRMWARE_TOOLS]
    return Toolset(device, server_tools("UTC", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/tool_calling.json"))
    args = parser.parse_args()
    import django

    django.setup()
    from django.conf import settings

    from voice.providers.llm.smollm2 import SmolLM2LLM, bundled_model_path

    llm = SmolLM2LLM(threads=settings.XIAOZHI_MODEL_THREADS, max_tokens=settings.XIAOZHI_LLM_MAX_TOKENS)
    specs = toolset().specs()
    started = time.perf_counter()
    llm.prefill_tools(specs)  # the router's few-shot prefix, as the session does once the device's tools are known
    prefill_ms = (time.perf_counter() - started) * 1000

    tool_rows, asked_ms = [], []
    for text, name, arguments in TOOL_REQUESTS:
        started = time.perf_counter()
        call = llm.decide(text, specs)
        asked_ms.append((time.perf_counter() - started) * 1000)
        got = (call.name, call.arguments) if call else None
        tool_rows.append({"text": text, "expected": [name, arguments], "got": got, "ok": got == (name, arguments)})

    plain_rows, decide_ms = [], []
    for text in PLAIN_QUESTIONS:
        started = time.perf_counter()
        call = llm.decide(text, specs)
        decide_ms.append((time.perf_counter() - started) * 1000)
        plain_rows.append({"text": text, "called": [call.name, call.arguments] if call else None})

    def requests(rows):
        out = []
        for text, name, arguments in rows:
            call = llm.decide(text, specs)
            got = (call.name, call.arguments) if call else None
            out.append({"text": text, "expected": [name, arguments], "got": got, "ok": got == (name, arguments)})
        return out

    def plain(rows):
        return [{"text": text, "called": [c.name, c.arguments] if (c := llm.decide(text, specs)) else None} for text in rows]

    held_out_tool, held_out_plain = requests(HELD_OUT_TOOL), plain(HELD_OUT_PLAIN)
    held_out_2_tool, held_out_2_plain = requests(HELD_OUT_2_TOOL), plain(HELD_OUT_2_PLAIN)

    factual = {}
    sampled = SmolLM2LLM(threads=settings.XIAOZHI_MODEL_THREADS, max_tokens=settings.XIAOZHI_LLM_MAX_TOKENS,
                         temperature=PREVIOUS_TEMPERATURE)
    for label, prompt, model in (("now", settings.XIAOZHI_SYSTEM_PROMPT, llm), ("previous_prompt", PREVIOUS_PROMPT, llm),
                                 ("now_prompt_sampled", settings.XIAOZHI_SYSTEM_PROMPT, sampled),
                                 ("before", PREVIOUS_PROMPT, sampled)):
        rows = []
        for text, keywords in FACTUAL:
            messages = [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
            reply = "".join(model.stream(messages, threading.Event()))
            rows.append({"text": text, "reply": reply, "ok": any(k in reply.lower() for k in keywords)})
        factual[label] = {"prompt": prompt, "temperature": model.temperature,
                          "correct": sum(r["ok"] for r in rows) / len(rows), "rows": rows}

    result = {
        "model": Path(bundled_model_path()).name,
        "threads": settings.XIAOZHI_MODEL_THREADS,
        "tool_requests_right": sum(r["ok"] for r in tool_rows) / len(tool_rows),
        "plain_questions_calling_a_tool": sum(r["called"] is not None for r in plain_rows) / len(plain_rows),
        "factual_correct": {k: v["correct"] for k, v in factual.items()},
        "router_ms_per_plain_turn": {"median": round(statistics.median(decide_ms), 1),
                                     "p90": round(sorted(decide_ms)[int(0.9 * len(decide_ms)) - 1], 1),
                                     "all": [round(x, 1) for x in decide_ms]},
        "prefill_tools_ms": round(prefill_ms, 1),
        "router_ms_per_tool_request": {"median": round(statistics.median(asked_ms), 1),
                                       "max": round(max(asked_ms), 1)},
        "held_out_tool_requests_right": sum(r["ok"] for r in held_out_tool) / len(held_out_tool),
        "held_out_plain_calling_a_tool": sum(r["called"] is not None for r in held_out_plain) / len(held_out_plain),
        "held_out_2_tool_requests_right": sum(r["ok"] for r in held_out_2_tool) / len(held_out_2_tool),
        "held_out_2_plain_calling_a_tool": sum(r["called"] is not None for r in held_out_2_plain) / len(held_out_2_plain),
        "tool_rows": tool_rows, "held_out_tool_rows": held_out_tool, "held_out_plain_rows": held_out_plain,
        "held_out_2_tool_rows": held_out_2_tool, "held_out_2_plain_rows": held_out_2_plain, "plain_rows": plain_rows, "factual": factual,
    }
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    summary = {k: result[k] for k in ("model", "tool_requests_right", "plain_questions_calling_a_tool", "factual_correct",
                                      "held_out_tool_requests_right", "held_out_plain_calling_a_tool",
                                      "held_out_2_tool_requests_right", "held_out_2_plain_calling_a_tool")}
    summary["router_ms_plain_median"] = result["router_ms_per_plain_turn"]["median"]
    summary["router_ms_plain_max"] = max(decide_ms)
    summary["router_ms_tool_median"] = result["router_ms_per_tool_request"]["median"]
    summary["prefill_tools_ms"] = result["prefill_tools_ms"]
    print(json.dumps(summary, indent=2))
    llm.close()
    sampled.close()


if __name__ == "__main__":
    main()

"""Memory across reconnects on the bundled default (SmolLM2): does "What is my name?" get the name
the user gave in an earlier session?

Two parts, with varied names and preferences:

- ``text``: the LLM alone, in this process. For each introduction, three memories: none (the
  baseline), SmolLM2's own summary (the ``summarize_memory`` operation, the ``llm`` method) and the
  deterministic extraction (``extract``, what ``auto`` uses for SmolLM2). Each is put in the system
  prompt as a session gets it and the model is asked the question.
- ``e2e``: spoken, against a real ``python -m xiaozhi.server`` with the bundled models and default
  settings: session 1 says "My name is <name> and I love <thing>.", disconnects; once the memory is
  stored, session 2 asks "What is my name?". The name counts as recalled when the reply holds the
  name as the ASR heard it in session 1 (spoken "Ana" is heard as "Anna").

    python benchmarks/memory_recall.py --trials 10
    python benchmarks/memory_recall.py --parts placements --output benchmarks/results/memory_placements.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.turn_latency import start_server  # noqa: E402  (after the path is set)

PEOPLE = [("Ana", "jazz"), ("Tom", "pizza"), ("Maria", "tennis"), ("David", "hiking"), ("Sofia", "chess"),
          ("Peter", "coffee"), ("Emma", "painting"), ("James", "football"), ("Lucy", "cats"), ("Daniel", "rock music"),
          ("Olivia", "swimming"), ("Sam", "science fiction")]
QUESTION = "What is my name?"


def prepare_env(prefix: str) -> dict:
    """The server's environment (a temporary SQLite, never the developer's MySQL), shared with this
    process, which reads the stored memories from the same file."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ, SQLITE_PATH=str(workdir / "db.sqlite3"), XIAOZHI_DATA_DIR=str(workdir))
    env.pop("DATABASE_URL", None)
    os.environ.update({k: env[k] for k in ("SQLITE_PATH", "XIAOZHI_DATA_DIR")})
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    os.environ["XIAOZHI_PRELOAD_MODELS"] = "false"
    import django

    django.setup()
    return env


def introduction(name: str, thing: str) -> str:
    return f"My name is {name} and I love {thing}."


def judge(reply: str, name: str) -> dict:
    """``recalled``: the reply holds the name; ``as_users_name``: stricter, it holds it and never
    claims it as the assistant's own ("I'm Ana, your assistant", which SmolLM2 often answers)."""
    low, n = reply.lower(), re.escape(name.lower())
    own = re.search(rf"\b(?:i'm|i am|my name is|call me|this is)\s+{n}\b", low)
    recalled = re.search(rf"\b{n}\b", low) is not None
    return {"recalled": recalled, "as_users_name": recalled and not own}


def text_part(trials: int) -> dict:
    from django.conf import settings

    from voice import memory
    from voice.providers import registry
    from voice.workers import operations

    llm = registry.get_llm("smollm2")
    system = settings.XIAOZHI_SYSTEM_PROMPT
    limit = settings.XIAOZHI_MEMORY_MAX_CHARS
    rows = []
    for name, thing in (PEOPLE * 2)[:trials]:
        said = introduction(name, thing)
        memories = {
            "none": "",
            "llm": operations.summarize_memory("smollm2", "", [[said, ""]], limit),
            "extract": memory.merge_extracted("", ((said, ""),), limit),
        }
        for method, text in memories.items():
            messages = [{"role": "system", "content": memory.prompt_with_memory(system, text)},
                        {"role": "user", "content": QUESTION}]
            answer = "".join(llm.stream(messages, threading.Event())).strip()
            rows.append({"name": name, "thing": thing, "method": method, "memory": text,
                         "memory_has_name": name.lower() in text.lower(),
                         "memory_has_thing": thing.lower() in text.lower(),
                         "answer": answer, **judge(answer, name)})
            print(f"text {method:<8} {name:<8} recalled={rows[-1]['recalled']!s:<5} memory={text[:60]!r} answer={answer[:70]!r}")
    summary = {}
    for method in ("none", "llm", "extract"):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {"trials": len(mine), "recalled": sum(r["recalled"] for r in mine),
                           "as_users_name": sum(r["as_users_name"] for r in mine),
                           "memory_has_name": sum(r["memory_has_name"] for r in mine),
                           "memory_has_thing": sum(r["memory_has_thing"] for r in mine)}
    return {"summary": summary, "rows": rows}


# Where the memory goes in the system prompt (``memory.prompt_with_memory`` uses the first).
PLACEMENTS = {
    "appended": lambda system, m: f"{system} {m}",
    "appended+call_by_name": lambda system, m: f"{system} {m} Call the user by their name.",
    "intro_sentence": lambda system, m: f"{system} You know the user from earlier conversations. {m}",
    "person_talking_to_you": lambda system, m: f"{system} " + m.replace(
        "The user's", "The name of the person talking to you").replace("The user", "The person talking to you"),
    "heading": lambda system, m: f"{system} About the user, not about you: {m}",
}


def placements_part(trials: int, repeats: int = 2) -> dict:
    """The extracted memory placed in the system prompt in several ways, each asked the question."""
    from django.conf import settings

    from voice import memory
    from voice.providers import registry

    llm = registry.get_llm("smollm2")
    rows = []
    for _ in range(repeats):
        for name, thing in (PEOPLE * 2)[:trials]:
            text = memory.merge_extracted("", ((introduction(name, thing), ""),), 500)
            for placement, place in PLACEMENTS.items():
                messages = [{"role": "system", "content": place(settings.XIAOZHI_SYSTEM_PROMPT, text)},
                            {"role": "user", "content": QUESTION}]
                answer = "".join(llm.stream(messages, threading.Event())).strip()
                rows.append({"name": name, "placement": placement, "answer": answer, **judge(answer, name)})
    summary = {p: {"trials": len(mine := [r for r in rows if r["placement"] == p]),
                   "recalled": sum(r["recalled"] for r in mine), "as_users_name": sum(r["as_users_name"] for r in mine)}
               for p in PLACEMENTS}
    return {"summary": summary, "rows": rows}


async def e2e_part(base: str, trials: int, say) -> dict:
    from channels.db import database_sync_to_async

    from devices.models import Device, Turn
    from loadtest.simulated_device import SimulatedDevice

    async def session(device_id: str, text: str):
        device = SimulatedDevice(device_id)
        await device.ota(f"{base}/xiaozhi/ota/")
        await device.connect()
        result = await device.turn(say(text), mode="manual", timeout=60)
        await device.close()
        return result

    @database_sync_to_async
    def stored(device_id):
        return Device.objects.filter(device_id=device_id).values_list("memory", flat=True).first() or ""

    @database_sync_to_async
    def last_reply(device_id):
        return Turn.objects.filter(device__device_id=device_id).order_by("-id").values_list("reply_text", flat=True).first()

    rows = []
    for i, (name, thing) in enumerate((PEOPLE * 2)[:trials]):
        device_id = f"02:00:00:00:4d:{i:02x}"
        first = await session(device_id, introduction(name, thing))
        heard = re.search(r"my name is (\w+)", first.stt or "", re.I)
        heard = heard.group(1) if heard else None
        closed = time.monotonic()
        remembered = ""
        while time.monotonic() - closed < 60 and not remembered:
            remembered = await stored(device_id)
            await asyncio.sleep(0.1)
        stored_after_ms = round((time.monotonic() - closed) * 1000) if remembered else None
        second = await session(device_id, QUESTION)
        reply = await last_reply(device_id) or ""
        row = {"name": name, "thing": thing, "heard_1": first.stt, "heard_name": heard, "memory": remembered,
               "memory_stored_after_close_ms": stored_after_ms, "heard_2": second.stt, "reply": reply,
               **(judge(reply, heard) if heard else {"recalled": False, "as_users_name": False})}
        rows.append(row)
        print(f"e2e {name:<8} heard={heard!r:<10} recalled={row['recalled']!s:<5} memory={remembered[:50]!r} reply={reply[:70]!r}")
    return {"summary": {"trials": len(rows), "recalled": sum(r["recalled"] for r in rows),
                        "as_users_name": sum(r["as_users_name"] for r in rows),
                        "memory_stored": sum(bool(r["memory"]) for r in rows),
                        "name_heard": sum(bool(r["heard_name"]) for r in rows)}, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--parts", default="text,e2e", help="text, e2e and/or placements (comma-separated)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "memory_recall.json"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    env = prepare_env("xiaozhi-memory-")
    report = {"machine": f"{os.cpu_count()} cores", "trials": args.trials, "question": QUESTION}
    if "placements" in parts:
        report["placements"] = placements_part(args.trials)
    if "text" in parts:
        report["text"] = text_part(args.trials)
    if parts & {"text", "placements"}:
        from voice.providers import registry

        registry.reset_for_tests()  # free this process's SmolLM2 before the server loads its own
    if "e2e" in parts:
        from loadtest.simulated_device import spoken_frames

        speech = {text: spoken_frames(text) for text in
                  [introduction(*p) for p in (PEOPLE * 2)[:args.trials]] + [QUESTION]}
        process, base = start_server(env)
        try:
            report["e2e"] = asyncio.run(e2e_part(base, args.trials, speech.__getitem__))
        finally:
            process.terminate()
            process.wait(10)
    Path(args.output).write_text(json.dumps(report, indent=2))
    for part in ("placements", "text", "e2e"):
        if part in report:
            print(part, json.dumps(report[part]["summary"]))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

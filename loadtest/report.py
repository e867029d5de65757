"""Figures from what the devices measured: percentiles, the summary table, the JSON report, verdicts.

Kept apart from the generator so the arithmetic is testable and the same report can be rebuilt
from stored turns.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from voice.percentile import percentile

LATE_FLAG_MS = 30.0  # the pacing loop is "behind" when a frame leaves this much after its slot

LATENCY_KEYS = ["connect_ms", "hello_ms", "stt_ms", "tts_start_ms", "ttfa_ms"]


def summarize(values) -> dict:
    """Count, p50/p95/p99 (``voice.percentile``), max and mean of one figure, rounded to 0.1 ms."""
    values = [v for v in values if v is not None]
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    r = lambda v: round(v, 1)  # noqa: E731
    return {"count": len(values), "p50": r(percentile(values, 0.5)), "p95": r(percentile(values, 0.95)),
            "p99": r(percentile(values, 0.99)), "max": r(max(values)), "mean": r(sum(values) / len(values))}


@dataclass
class Targets:
    ttfa_p95_ms: float | None = None
    max_error_rate: float | None = None
    max_underruns_per_minute: float | None = None

    def as_dict(self) -> dict:
        return {"ttfa_p95_ms": self.ttfa_p95_ms, "max_error_rate": self.max_error_rate,
                "max_underruns_per_minute": self.max_underruns_per_minute}


def build(devices: list[dict], turns: list[dict], lateness_ms: list[float], settings: dict, targets: Targets,
          wall_seconds: float, stalls: list[tuple[float, float]] = ()) -> dict:
    """The whole report. ``devices``: one dict per device (connect_ms, hello_ms, error);
    ``turns``: one dict per attempted turn (latencies, playout figures, error)."""
    errors = Counter(d["error"] for d in devices if d.get("error"))
    errors.update(t["error"] for t in turns if t.get("error"))
    attempts = len(turns) + sum(1 for d in devices if d.get("error") and not d.get("connected"))
    completed = sum(1 for t in turns if not t.get("error"))
    played_seconds = sum(t.get("played_seconds", 0) for t in turns)
    underruns = sum(t.get("underruns", 0) for t in turns)
    suspect = sum(t.get("underruns_in_generator_stall", 0) for t in turns)
    overflows = sum(t.get("overflows", 0) for t in turns)
    received = sum(t.get("audio_frames", 0) for t in turns)
    expected = settings.get("expect_audio_seconds")
    figures = {key: summarize([t.get(key) for t in (devices if key in ("connect_ms", "hello_ms") else turns)])
               for key in LATENCY_KEYS}
    figures["send_lateness_ms"] = summarize(lateness_ms)
    late = figures["send_lateness_ms"]
    error_rate = (sum(errors.values()) / attempts) if attempts else 0.0
    upm = underruns / (played_seconds / 60) if played_seconds else 0.0
    server_upm = (underruns - suspect) / (played_seconds / 60) if played_seconds else 0.0
    audio = {
        "frames_received": received, "seconds_received": round(received * 0.06, 2),
        "seconds_played": round(played_seconds, 2), "frames_dropped": overflows,
        "underruns": underruns, "underrun_seconds": round(sum(t.get("underrun_seconds", 0) for t in turns), 2),
        "underruns_per_minute": round(upm, 2),
        # gaps that overlap a stall of the generator's own loop may be its late timestamps, not the server
        "underruns_in_generator_stall": suspect, "server_underruns_per_minute": round(server_upm, 2),
        "seconds_expected": None if expected is None else round(expected * len(turns), 2),
        "received_vs_expected": None if not expected or not turns else round(received * 0.06 / (expected * len(turns)), 3),
    }
    report = {
        "settings": settings, "targets": targets.as_dict(), "wall_seconds": round(wall_seconds, 1),
        "devices": len(devices), "devices_connected": sum(1 for d in devices if d.get("connected")),
        "turns_attempted": len(turns), "turns_completed": completed,
        # turns the server refused with its spoken busy notice (also under errors, as "busy")
        "busy_turns": errors.get("busy", 0), "busy_rate": round(errors.get("busy", 0) / attempts, 4) if attempts else 0.0,
        "errors": dict(errors), "error_rate": round(error_rate, 4),
        "figures": figures, "audio": audio,
        "generator": {"behind_schedule": bool(late["max"] is not None and late["p95"] > LATE_FLAG_MS),
                      "late_flag_ms": LATE_FLAG_MS, "lateness_p95_ms": late["p95"], "lateness_max_ms": late["max"],
                      "frames_later_than_flag": sum(1 for v in lateness_ms if v > LATE_FLAG_MS),
                      "stalls": {"count": len(stalls),
                                 "max_ms": round(max(((b - a) * 1000 for a, b in stalls), default=0.0), 1)}},
        "fairness": fairness([t for t in turns if t.get("sync")]),
        "turns": turns,
    }
    report["verdict"] = verdict(report, targets)
    report["passed"] = all(v["passed"] for v in report["verdict"].values())
    return report


def _ranks(rows: list[dict], key: str) -> dict[int, int]:
    """device -> 1-based position when ``rows`` are ordered by ``key`` (ties keep device order)."""
    ordered = sorted(rows, key=lambda t: (t[key], t["device"]))
    return {t["device"]: i + 1 for i, t in enumerate(ordered)}


def fairness(turns: list[dict]) -> dict | None:
    """Simultaneous talkers (one turn each): arrival order (when each finished speaking) against the
    order their answers started (first audio), who heard "busy", who got nothing, and stutter."""
    turns = [t for t in turns if t.get("speech_end_s") is not None]
    if not turns:
        return None
    origin = min(t["speech_end_s"] for t in turns)
    arrival = _ranks(turns, "speech_end_s")
    answered = [t for t in turns if not t.get("error") and t.get("first_audio_s") is not None]
    answer = _ranks(answered, "first_audio_s")
    ms = lambda v: None if v is None else round((v - origin) * 1000)  # noqa: E731
    rows = []
    for t in sorted(turns, key=lambda t: arrival[t["device"]]):
        outcome = "answered" if t["device"] in answer else ("busy" if t.get("busy") else (t.get("error") or "unanswered"))
        rows.append({"device": t["device"], "speech_end_ms": ms(t["speech_end_s"]),
                     "first_audio_ms": ms(t.get("first_audio_s") if outcome == "answered" else None),
                     "ttfa_ms": t.get("ttfa_ms"), "outcome": outcome, "arrival": arrival[t["device"]],
                     "answer": answer.get(t["device"]), "underruns": t.get("underruns", 0),
                     "underrun_seconds": t.get("underrun_seconds", 0.0)})
    served = [r for r in rows if r["answer"] is not None]  # in arrival order
    inversions = sum(1 for i, a in enumerate(served) for b in served[i + 1:] if a["answer"] > b["answer"])
    busy = [r for r in rows if r["outcome"] == "busy"]
    latest_answered = max((r["arrival"] for r in served), default=0)
    return {
        "talkers": len(rows), "answered": len(served), "busy": len(busy),
        "unanswered": len(rows) - len(served) - len(busy),  # neither an answer nor "busy": starved
        "answered_in_arrival_order": inversions == 0, "order_inversions": inversions,
        "busy_after_every_answered": all(r["arrival"] > latest_answered for r in busy),
        "answered_underruns": sum(r["underruns"] for r in served),
        "answered_underrun_seconds": round(sum(r["underrun_seconds"] for r in served), 3),
        "devices": rows,
    }


def fairness_table(f: dict) -> str:
    lines = [f"simultaneous talkers: {f['talkers']}, answered {f['answered']}, busy {f['busy']}, "
             f"unanswered {f['unanswered']}; answered in arrival order: "
             f"{'yes' if f['answered_in_arrival_order'] else 'NO (%d inversions)' % f['order_inversions']}; "
             f"busy only after every answered arrival: {'yes' if f['busy_after_every_answered'] else 'no'}; "
             f"stutter of the answered: {f['answered_underruns']} underruns ({f['answered_underrun_seconds']} s)",
             f"{'device':>6}{'speech end':>12}{'first audio':>13}{'ttfa':>8}  {'outcome':<12}{'arrival':>8}{'answer':>8}{'underruns':>11}"]
    for r in f["devices"]:
        lines.append(f"{r['device']:>6}{_fmt(r['speech_end_ms']):>12}{_fmt(r['first_audio_ms']):>13}{_fmt(r['ttfa_ms']):>8}  "
                     f"{r['outcome']:<12}{r['arrival']:>8}{'-' if r['answer'] is None else r['answer']:>8}{r['underruns']:>11}")
    lines.append("(ms after the first talker's end of speech; arrival = order of end of speech, answer = order of first audio)")
    return "\n".join(lines)


def verdict(report: dict, targets: Targets) -> dict:
    out = {}
    ttfa = report["figures"]["ttfa_ms"]["p95"]
    if targets.ttfa_p95_ms is not None:
        out["ttfa_p95_ms"] = {"target": targets.ttfa_p95_ms, "value": ttfa,
                              "passed": ttfa is not None and ttfa <= targets.ttfa_p95_ms}
    if targets.max_error_rate is not None:
        out["error_rate"] = {"target": targets.max_error_rate, "value": report["error_rate"],
                             "passed": report["error_rate"] <= targets.max_error_rate}
    if targets.max_underruns_per_minute is not None:
        upm = report["audio"]["server_underruns_per_minute"]  # stutter the generator did not cause
        out["underruns_per_minute"] = {"target": targets.max_underruns_per_minute, "value": upm,
                                       "passed": upm <= targets.max_underruns_per_minute}
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def table(report: dict) -> str:
    """The summary printed at the end of a run."""
    lines = [f"{report['devices']} devices ({report['devices_connected']} connected), "
             f"{report['turns_completed']}/{report['turns_attempted']} turns completed in {report['wall_seconds']} s",
             f"{'figure (ms)':<34}{'n':>6}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"]
    names = {"connect_ms": "connect (OTA+socket)", "hello_ms": "hello", "stt_ms": "end of speech -> stt",
             "tts_start_ms": "end of speech -> tts start", "ttfa_ms": "end of speech -> first audio",
             "send_lateness_ms": "generator send lateness"}
    for key, name in names.items():
        s = report["figures"][key]
        lines.append(f"{name:<34}{s['count']:>6}{_fmt(s['p50']):>8}{_fmt(s['p95']):>8}{_fmt(s['p99']):>8}{_fmt(s['max']):>8}")
    a = report["audio"]
    lines.append(f"audio: {a['seconds_received']} s received, {a['seconds_played']} s played, {a['frames_dropped']} frames "
                 f"dropped (overflow), {a['underruns']} underruns = {a['underruns_per_minute']}/min of answer audio "
                 f"({a['underruns_in_generator_stall']} during generator stalls; "
                 f"{a['server_underruns_per_minute']}/min without them)"
                 + (f", received/expected {a['received_vs_expected']}" if a["received_vs_expected"] is not None else ""))
    s = report["generator"].get("stalls")
    if s:
        lines.append(f"generator loop stalls > 20 ms: {s['count']} (longest {s['max_ms']:.0f} ms)")
    lines.append("errors: " + (", ".join(f"{k} {v}" for k, v in sorted(report["errors"].items())) or "none")
                 + f" (rate {report['error_rate']:.2%}); answered with the busy notice: {report.get('busy_turns', 0)} "
                 f"({report.get('busy_rate', 0):.2%})")
    if report.get("fairness"):
        lines.append(fairness_table(report["fairness"]))
    g = report["generator"]
    if g["behind_schedule"]:
        lines.append(f"WARNING: the generator fell behind its schedule (send lateness p95 {g['lateness_p95_ms']} ms, "
                     f"max {g['lateness_max_ms']} ms > {g['late_flag_ms']:.0f} ms): figures include the generator's own delay")
    for name, v in report["verdict"].items():
        lines.append(f"target {name}: {v['value']} vs {v['target']} -> {'ok' if v['passed'] else 'MISSED'}")
    return "\n".join(lines)

"""Figures from what the devices measured: percentiles, the summary table, the JSON report, verdicts.

Kept apart from the generator so the arithmetic is testable and the same report can be rebuilt
from stored turns.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

LATE_FLAG_MS = 30.0  # the pacing loop is "behind" when a frame leaves this much after its slot

LATENCY_KEYS = ["connect_ms", "hello_ms", "stt_ms", "tts_start_ms", "ttfa_ms"]


def percentile(values, q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None for no values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stats(values) -> dict:
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
    figures = {key: stats([t.get(key) for t in (devices if key in ("connect_ms", "hello_ms") else turns)])
               for key in LATENCY_KEYS}
    figures["send_lateness_ms"] = stats(lateness_ms)
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
        "errors": dict(errors), "error_rate": round(error_rate, 4),
        "figures": figures, "audio": audio,
        "generator": {"behind_schedule": bool(late["max"] is not None and late["p95"] > LATE_FLAG_MS),
                      "late_flag_ms": LATE_FLAG_MS, "lateness_p95_ms": late["p95"], "lateness_max_ms": late["max"],
                      "frames_later_than_flag": sum(1 for v in lateness_ms if v > LATE_FLAG_MS),
                      "stalls": {"count": len(stalls),
                                 "max_ms": round(max(((b - a) * 1000 for a, b in stalls), default=0.0), 1)}},
        "turns": turns,
    }
    report["verdict"] = verdict(report, targets)
    report["passed"] = all(v["passed"] for v in report["verdict"].values())
    return report


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
                 + f" (rate {report['error_rate']:.2%})")
    g = report["generator"]
    if g["behind_schedule"]:
        lines.append(f"WARNING: the generator fell behind its schedule (send lateness p95 {g['lateness_p95_ms']} ms, "
                     f"max {g['lateness_max_ms']} ms > {g['late_flag_ms']:.0f} ms): figures include the generator's own delay")
    for name, v in report["verdict"].items():
        lines.append(f"target {name}: {v['value']} vs {v['target']} -> {'ok' if v['passed'] else 'MISSED'}")
    return "\n".join(lines)

"""Prometheus text exposition of the combined figures (all processes, through Redis when configured)."""
from __future__ import annotations

import re


def _name(raw: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", raw)


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(combined: dict) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float | None]]) -> None:
        samples = [(labels, v) for labels, v in samples if v is not None]
        if not samples:
            return
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {float(value):g}" if text else f"{name} {float(value):g}")

    family("xiaozhi_processes", "gauge", "Server processes reporting.", [({}, combined["process_count"])])
    for key, value in sorted(combined["counters"].items()):
        family(f"xiaozhi_{_name(key)}_total", "counter", f"Sum over processes of {key}.", [({}, value)])
    family("xiaozhi_errors_total", "counter", "Errors by kind, summed over processes.",
           [({"kind": k}, v) for k, v in sorted(combined["errors"].items())])
    for key, value in sorted(combined["gauges"].items()):
        family(f"xiaozhi_{_name(key)}", "gauge", f"Sum over processes of {key}.", [({}, value)])
    family("xiaozhi_process_connected_devices", "gauge", "Connected devices per process.",
           [({"process": p}, f["connected_devices"]) for p, f in sorted(combined["processes"].items())])
    family("xiaozhi_process_resident_memory_bytes", "gauge", "RSS per process.",
           [({"process": p}, f["rss_bytes"]) for p, f in sorted(combined["processes"].items())])
    family("xiaozhi_process_open_fds", "gauge", "Open file descriptors per process.",
           [({"process": p}, f.get("open_fds")) for p, f in sorted(combined["processes"].items())])
    family("xiaozhi_process_asyncio_tasks", "gauge", "Unfinished asyncio tasks on the server loop, per process.",
           [({"process": p}, f.get("asyncio_tasks")) for p, f in sorted(combined["processes"].items())])
    family("xiaozhi_process_cpu_percent", "gauge", "CPU per process since its last report.",
           [({"process": p}, f["cpu_percent"]) for p, f in sorted(combined["processes"].items())])
    family("xiaozhi_turns_per_minute", "gauge", "Turns finished in the last minute.", [({}, combined["turns_per_minute"])])
    latency = combined["latency_ms"]
    family("xiaozhi_stage_latency_ms", "gauge",
           "Stage latency percentiles (ms after end of speech), the worst process's, over the recent window.",
           [({"stage": s, "quantile": q[1:]}, v) for s, f in sorted(latency.items()) for q, v in f.items() if q != "count"])
    family("xiaozhi_stage_latency_samples", "gauge", "Samples behind the stage percentiles.",
           [({"stage": s}, f["count"]) for s, f in sorted(latency.items())])
    for field in ("active", "queued", "completed", "failed", "rejected", "timed_out", "avg_wait_ms", "avg_run_ms"):
        kind = "counter" if field in ("completed", "failed", "rejected", "timed_out") else "gauge"
        name = f"xiaozhi_service_{field}" + ("_total" if kind == "counter" else "")
        family(name, kind, f"Worker service {field}, combined over processes.",
               [({"service": s}, f.get(field)) for s, f in sorted(combined["services"].items())])
    family("xiaozhi_cache_hit_ratio", "gauge", "Cache hit ratio.",
           [({"cache": c}, f.get("hit_rate")) for c, f in sorted(combined["cache"].items())])
    system = combined["system"]
    for key in ("cpu_percent", "memory_percent", "disk_percent", "load_1"):
        family(f"xiaozhi_host_{key}", "gauge", f"Host {key} (the busiest host).", [({}, system.get(key))])
    family("xiaozhi_host_network_sent_bytes_total", "counter", "Bytes sent by the hosts.", [({}, system["net_bytes_sent"])])
    family("xiaozhi_host_network_received_bytes_total", "counter", "Bytes received by the hosts.",
           [({}, system["net_bytes_recv"])])
    db = combined.get("database", {})
    family("xiaozhi_devices_online", "gauge", "Devices marked online in the database.", [({}, db.get("devices_online"))])
    family("xiaozhi_error_rate_percent", "gauge", "Turns with an error in the recent window, percent.",
           [({}, combined["flat"]["error_rate"])])
    return "\n".join(lines) + "\n"

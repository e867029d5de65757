"""Combine the figures of every server process.

Each process publishes its own figures to Redis under a key that expires, so a dead process drops
out by itself, and lists itself in a sorted set (score = time) so readers fetch the live keys with
one MGET instead of scanning a keyspace shared with the channel layer and cache. Without Redis there is only this process.
"""
from __future__ import annotations

import json
import time
import logging

from django.conf import settings

from monitoring import collectors

log = logging.getLogger(__name__)
_client = None


def redis_client():
    global _client
    if not settings.REDIS_URL:
        return None
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _client


def ttl_seconds() -> int:
    return max(int(settings.XIAOZHI_MONITORING_PUBLISH_SECONDS * 3), 10)


def publish(figures: dict | None = None) -> dict:
    """Publish this process's figures (collected now unless given); returns them."""
    figures = figures or collectors.collect()
    client = redis_client()
    if client is not None:
        try:
            prefix = settings.XIAOZHI_MONITORING_REDIS_PREFIX
            pipe = client.pipeline(transaction=False)
            pipe.set(prefix + figures["process"], json.dumps(figures), ex=ttl_seconds())
            pipe.zadd(prefix + "index", {figures["process"]: figures["at"]})  # readers MGET these, never SCAN
            pipe.execute()
        except Exception:  # noqa: BLE001 - monitoring must never break serving
            log.warning("could not publish metrics to Redis", exc_info=True)
    return figures


def unpublish() -> None:
    client = redis_client()
    if client is not None:
        prefix = settings.XIAOZHI_MONITORING_REDIS_PREFIX
        client.delete(prefix + collectors.process_id())
        client.zrem(prefix + "index", collectors.process_id())


def all_processes(include_self: bool = True) -> list[dict]:
    """Fresh figures for this process (published on the way) and the last published by the others.

    A Celery worker passes ``include_self=False``: it serves no device, so it is not a server process.
    """
    client = redis_client()
    if client is None:
        return [collectors.collect()]
    own = publish() if include_self else {"process": None, "at": time.time()}
    try:
        prefix = settings.XIAOZHI_MONITORING_REDIS_PREFIX
        index = prefix + "index"
        client.zremrangebyscore(index, "-inf", own["at"] - ttl_seconds())  # processes gone quiet
        names = [n.decode() for n in client.zrange(index, 0, -1)]
        values = client.mget([prefix + n for n in names]) if names else []
    except Exception:  # noqa: BLE001
        log.warning("could not read metrics from Redis", exc_info=True)
        return [own] if include_self else [collectors.collect()]
    others = [json.loads(v) for v in values if v]
    mine = [own] if include_self else []
    return mine + [p for p in others if p.get("process") != own["process"]] or [collectors.collect()]


def _sum_into(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            target[key] = target.get(key, 0) + value


def combine(processes: list[dict]) -> dict:
    """One view of all processes: counters and gauges summed; latency percentiles the worst process's
    (percentiles cannot be added, and the worst is what an alert should see); machine figures per host."""
    counters, errors, gauges, cache = {}, {}, {}, {}
    latency: dict[str, dict] = {}
    service_totals: dict[str, dict] = {}
    hosts: dict[str, dict] = {}
    per_process = {}
    turns_per_minute = 0
    for proc in processes:
        app, system = proc["app"], proc["system"]
        _sum_into(counters, app["counters"])
        _sum_into(errors, app["errors"])
        _sum_into(gauges, app["gauges"])
        turns_per_minute += app["turns_per_minute"]
        for name, figures in app.get("cache", {}).items():
            _sum_into(cache.setdefault(name, {}), figures)
        for stage, figures in app["latency_ms"].items():
            merged = latency.setdefault(stage, {"count": 0})
            merged["count"] += figures["count"]
            for q, value in figures.items():
                if q != "count" and value is not None:
                    merged[q] = max(merged.get(q) or 0, value)
        for name, figures in app["services"].items():
            total = service_totals.setdefault(name, {"processes": 0, "_wait": 0.0, "_run": 0.0, "_done": 0})
            done = figures["completed"] + figures["failed"]
            total["processes"] += 1
            total["_wait"] += figures["avg_wait_ms"] * done
            total["_run"] += figures["avg_run_ms"] * done
            total["_done"] += done
            _sum_into(total, {k: v for k, v in figures.items() if k not in ("avg_wait_ms", "avg_run_ms", "utilisation")})
            total["utilisation_max"] = max(total.get("utilisation_max", 0), figures["utilisation"])
        hosts[proc["process"].rsplit(":", 1)[0]] = system
        per_process[proc["process"]] = {
            "rss_bytes": system["process_rss_bytes"], "cpu_percent": system["process_cpu_percent"],
            # .get: figures published by a process of an older release lack these two.
            "open_fds": system.get("process_open_fds"), "asyncio_tasks": system.get("process_asyncio_tasks"),
            "connected_devices": app["gauges"].get("connected_devices", 0),
            "active_turns": app["gauges"].get("active_turns", 0),
        }
    for total in service_totals.values():
        done = max(total.pop("_done"), 1)
        total["avg_wait_ms"] = round(total.pop("_wait") / done, 2)
        total["avg_run_ms"] = round(total.pop("_run") / done, 2)
    for figures in cache.values():
        asked = figures.get("cache_hits", 0) + figures.get("cache_misses", 0)
        figures["hit_rate"] = round(figures.get("cache_hits", 0) / asked, 4) if asked else None
    host_list = list(hosts.values())
    system = {
        "cpu_percent": max((h["cpu_percent"] for h in host_list), default=None),
        "memory_percent": max((h["memory_percent"] for h in host_list), default=None),
        "disk_percent": max((h["disk_percent"] or 0 for h in host_list), default=None),
        "load_1": max((h["load_1"] or 0 for h in host_list), default=None),
        "net_bytes_sent": sum(h["net_bytes_sent"] or 0 for h in host_list),
        "net_bytes_recv": sum(h["net_bytes_recv"] or 0 for h in host_list),
        "hosts": hosts,
    }
    return {
        "processes": per_process,
        "process_count": len(processes),
        "system": system,
        "counters": counters,
        "errors": errors,
        "gauges": gauges,
        "turns_per_minute": turns_per_minute,
        "latency_ms": latency,
        "services": service_totals,
        "cache": cache,
    }


def current(with_database: bool = True, include_self: bool = True) -> dict:
    """The combined figures right now, with the flat values alerts and charts use under ``flat``."""
    combined = combine(all_processes(include_self))
    if with_database:
        combined["database"] = collectors.database()
    combined["flat"] = flatten(combined)
    return combined


TTFA_STAGE = "first_audio_sent_ms"


def flatten(combined: dict) -> dict:
    """The scalar figures rules and indexed columns refer to by name."""
    latency = combined["latency_ms"]
    db = combined.get("database", {})
    turns = db.get("turns_window", 0)
    flat = {
        "cpu_percent": combined["system"]["cpu_percent"],
        "memory_percent": combined["system"]["memory_percent"],
        "disk_percent": combined["system"]["disk_percent"],
        "load_1": combined["system"]["load_1"],
        "connected_devices": combined["gauges"].get("connected_devices", 0),
        "active_turns": combined["gauges"].get("active_turns", 0),
        "turns_per_minute": combined["turns_per_minute"],
        "ttfa_p50_ms": latency.get(TTFA_STAGE, {}).get("p50"),
        "ttfa_p95_ms": latency.get(TTFA_STAGE, {}).get("p95"),
        "error_rate": round(100.0 * db.get("errors_window", 0) / turns, 2) if turns else 0.0,
        "queue_length": sum(s.get("queued", 0) for s in combined["services"].values()),
        "ws_messages_in": combined["counters"].get("ws_messages_in", 0),
        "ws_messages_out": combined["counters"].get("ws_messages_out", 0),
        "ws_bytes_in": combined["counters"].get("ws_bytes_in", 0),
        "ws_bytes_out": combined["counters"].get("ws_bytes_out", 0),
        "devices_online": db.get("devices_online"),
    }
    return flat


def lookup(combined: dict, metric: str):
    """A rule's metric: a flat name, or a dotted path into the combined figures."""
    if metric in combined.get("flat", {}):
        return combined["flat"][metric]
    node = combined
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None

"""HTTP side of monitoring: /health, Prometheus /metrics, the JSON performance API and dashboard data."""
from __future__ import annotations

import functools
import hmac
from datetime import timedelta

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from monitoring import aggregate, prometheus
from monitoring.models import Alert, MetricSnapshot
from voice import live_stats
from voice.conf import effective_config
from voice.providers import registry
from voice.workers import built_services


def health(request):
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = f"error: {exc}"
    try:
        cache.set("health-probe", "1", 5)
        checks["cache"] = "ok" if cache.get("health-probe") == "1" else "error: no round trip"
    except Exception as exc:  # noqa: BLE001
        checks["cache"] = f"error: {exc}"
    if settings.REDIS_URL:
        try:
            checks["redis"] = "ok" if aggregate.redis_client().ping() else "error: no pong"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {exc}"
    checks["models"] = registry.loaded_names()
    if settings.XIAOZHI_WORKER_BACKEND == "celery":
        checks.update(_voice_worker_checks())
    stalled = {name: state for name, service in built_services().items()
               if (state := service.health()) != "ok"}
    checks["voice_services"] = "ok" if not stalled else "; ".join(stalled.values())
    healthy = all(checks[k] == "ok" for k in ("database", "cache", "redis", "voice_workers", "voice_services")
                  if k in checks)
    return JsonResponse({"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503)


def _voice_worker_checks() -> dict:
    """Under Celery the ASR/LLM/TTS models live in the workers: a service with no live worker
    (no heartbeat within its TTL) cannot answer any device, so the server is not healthy."""
    from voice.workers import heartbeat
    from voice.workers.celery_service import queue_name

    try:
        workers = heartbeat.live_workers()
    except Exception as exc:  # noqa: BLE001
        return {"voice_workers": f"error: {exc}"}
    missing = heartbeat.missing_services(workers)
    status = "ok" if not missing else "error: no live worker for " + ", ".join(
        f"{s} (queue {queue_name(s)})" for s in missing)
    detail = {s: [{"host": w["host"], "pid": w["pid"], "models": w["models"].get(s, []), "age_s": w["age_s"]}
                  for w in found] for s, found in workers.items()}
    return {"voice_workers": status, "workers": detail}


def _token_ok(request) -> bool:
    token = settings.XIAOZHI_MONITORING_API_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def monitoring_access(view):
    """/metrics and the read-only performance API show host names, pids and the configuration: a
    bearer token (XIAOZHI_MONITORING_API_TOKEN), a staff session, or XIAOZHI_MONITORING_PUBLIC."""

    @functools.wraps(view)
    def guarded(request, *args, **kwargs):
        if settings.XIAOZHI_MONITORING_PUBLIC or _token_ok(request) or (
                request.user.is_authenticated and request.user.is_staff):
            return view(request, *args, **kwargs)
        response = JsonResponse({"error": "authentication required: a staff session or "
                                          "Authorization: Bearer <XIAOZHI_MONITORING_API_TOKEN>"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="xiaozhi-monitoring"'
        return response

    return guarded


@require_GET
@monitoring_access
def metrics(request):
    return HttpResponse(prometheus.render(aggregate.current()), content_type="text/plain; version=0.0.4; charset=utf-8")


@require_GET
@monitoring_access
def performance(request):
    combined = aggregate.current()
    return JsonResponse({"metrics": combined["flat"], "processes": combined["processes"], "system": combined["system"],
                         "counters": combined["counters"], "errors": combined["errors"], "gauges": combined["gauges"],
                         "latency_ms": combined["latency_ms"], "services": combined["services"],
                         "cache": combined["cache"], "database": combined["database"]})


@require_GET
@monitoring_access
def performance_websocket(request):
    combined = aggregate.current(with_database=False)
    c = combined["counters"]
    return JsonResponse({
        "connected_devices": combined["gauges"].get("connected_devices", 0),
        "connections": c.get("connections", 0),
        "messages_in": c.get("ws_messages_in", 0), "messages_out": c.get("ws_messages_out", 0),
        "bytes_in": c.get("ws_bytes_in", 0), "bytes_out": c.get("ws_bytes_out", 0),
        "per_process": {p: f["connected_devices"] for p, f in combined["processes"].items()},
    })


@require_GET
@monitoring_access
def performance_operation(request, name: str):
    """One named operation: a latency stage (e.g. first_audio_sent_ms) or a worker service (e.g. asr)."""
    combined = aggregate.current(with_database=False)
    if name in combined["latency_ms"]:
        return JsonResponse({"operation": name, "kind": "stage", **combined["latency_ms"][name]})
    if name in combined["services"]:
        return JsonResponse({"operation": name, "kind": "service", **combined["services"][name]})
    return JsonResponse({"error": f"unknown operation {name!r}",
                         "known": sorted([*combined["latency_ms"], *combined["services"]])}, status=404)


@require_GET
@monitoring_access
def performance_concurrency(request):
    combined = aggregate.current(with_database=False)
    return JsonResponse({"active_turns": combined["gauges"].get("active_turns", 0),
                         "connected_devices": combined["gauges"].get("connected_devices", 0),
                         "services": combined["services"], "processes": combined["process_count"],
                         "configuration": effective_config()})


@csrf_exempt
@require_POST
def performance_reset(request):
    """Clear this process's counters and samples: a bearer token, or a staff session with its CSRF token."""
    if not _token_ok(request):
        if not (request.user.is_authenticated and request.user.is_staff):
            return JsonResponse({"error": "authentication required"}, status=403)
        rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
        if rejected is not None:
            return rejected
    live_stats.reset()
    aggregate.publish()
    return JsonResponse({"status": "reset", "process": aggregate.collectors.process_id()})


STAGES = ["asr_done_ms", "llm_first_token_ms", "first_sentence_ms", "tts_first_audio_ms", "first_audio_sent_ms"]
MAX_POINTS = 600


@staff_member_required
def dashboard_data(request):
    """Chart series over a chosen range: ?hours=N (default 1) or ?start=&end= ISO datetimes."""
    end = parse_datetime(request.GET.get("end", "")) or timezone.now()
    start = parse_datetime(request.GET.get("start", ""))
    if start is None:
        try:
            hours = min(max(float(request.GET.get("hours", 1)), 0.01), 24 * 366)
        except ValueError:
            hours = 1.0
        start = end - timedelta(hours=hours)
    rows = MetricSnapshot.objects.filter(created_at__gte=start, created_at__lte=end).order_by("created_at")
    total = rows.count()
    step = max(1, -(-total // MAX_POINTS))
    ids = list(rows.values_list("pk", flat=True))[::step]
    points = MetricSnapshot.objects.filter(pk__in=ids).order_by("created_at").only(
        "created_at", "cpu_percent", "memory_percent", "connected_devices", "error_rate", "ttfa_p95_ms", "metrics")
    series: dict = {"t": [], "cpu_percent": [], "memory_percent": [], "connected_devices": [], "error_rate": [],
                    "ttfa_p50_ms": [], "ttfa_p95_ms": [], "stages_p95": {s: [] for s in STAGES}, "queues": {}}
    for i, snap in enumerate(points):
        m = snap.metrics or {}
        series["t"].append(snap.created_at.timestamp())
        series["cpu_percent"].append(snap.cpu_percent)
        series["memory_percent"].append(snap.memory_percent)
        series["connected_devices"].append(snap.connected_devices)
        series["error_rate"].append(snap.error_rate)
        series["ttfa_p95_ms"].append(snap.ttfa_p95_ms)
        series["ttfa_p50_ms"].append((m.get("flat") or {}).get("ttfa_p50_ms"))
        for stage in STAGES:
            series["stages_p95"][stage].append((m.get("latency_ms", {}).get(stage) or {}).get("p95"))
        for name, figures in (m.get("services") or {}).items():
            series["queues"].setdefault(name, [None] * i).append(figures.get("queued"))
        for values in series["queues"].values():
            values.extend([None] * (i + 1 - len(values)))
    open_alerts = [{"rule": a.rule.name, "severity": a.severity, "message": a.message,
                    "opened_at": a.opened_at.isoformat()}
                   for a in Alert.objects.filter(status=Alert.OPEN).select_related("rule")[:50]]
    return JsonResponse({"start": start.isoformat(), "end": end.isoformat(), "snapshots": total,
                         "series": series, "open_alerts": open_alerts})

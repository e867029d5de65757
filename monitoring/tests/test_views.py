"""/health, /metrics, the performance API and the dashboard data endpoint."""
import json
import re
import time

import pytest
from django.contrib.auth.models import User
from django.utils.html import escape

from monitoring import aggregate, collectors, snapshots
from monitoring.models import MetricSnapshot
from voice import live_stats
from voice.pipeline.turn_row import TurnRow


def load_some_figures():
    live_stats.gauge_add("connected_devices", 3)
    live_stats.incr("ws_messages_in", 7)
    live_stats.incr("ws_bytes_in", 700)
    live_stats.turn_finished(TurnRow(first_audio_sent_ms=900.0, asr_done_ms=200.0))
    live_stats.turn_finished(TurnRow(first_audio_sent_ms=1100.0, error="llm: boom"))


def fake_other_process(settings, devices=5):
    """Another server process's published figures, as it would leave them in Redis."""
    other = collectors.collect()
    other["process"] = "otherhost:4242"
    other["app"]["gauges"] = {"connected_devices": devices, "active_turns": 1}
    other["app"]["counters"] = {"ws_messages_in": 10, "turns": 1}
    other["app"]["latency_ms"] = {"first_audio_sent_ms": {"count": 1, "p50": 3000.0, "p95": 3000.0, "p99": 3000.0}}
    aggregate.publish(other)


@pytest.fixture
def scraper(settings):
    """A client with the monitoring token, as Prometheus scrapes (/metrics and the API need it or staff)."""
    from django.test import Client

    settings.XIAOZHI_MONITORING_API_TOKEN = "scrape-token"
    return Client(headers={"Authorization": "Bearer scrape-token"})


@pytest.fixture
def staff_client(client, db):
    user = User.objects.create_superuser("admin", "a@example.com", "pw-123456")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_health_reports_database_redis_and_models(client, settings):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert set(body["checks"]["models"]) >= {"vad", "asr", "llm", "tts"}
    assert ("redis" in body["checks"]) == bool(settings.REDIS_URL)


@pytest.mark.django_db
def test_health_is_503_while_a_services_latest_calls_time_out_and_ok_once_one_completes(client, monkeypatch):
    """A hung model used to leave /health at 200 while every device heard the apology."""
    import asyncio
    import dataclasses

    from voice.conf import service_limits
    from voice.tests import probe_operations  # noqa: F401 - the probe operations
    from voice.workers import ServiceTimeout, make_service, services

    llm = make_service(dataclasses.replace(service_limits("llm"), first_token_timeout=0.2), backend="local")
    monkeypatch.setitem(services(), "llm", llm)

    async def stalled_reply():
        with pytest.raises(ServiceTimeout):
            async for _ in llm.stream("probe.late", 5.0):
                pass

    asyncio.run(stalled_reply())
    response = client.get("/health")
    assert response.status_code == 503, response.json()
    assert response.json()["checks"]["voice_services"] == "error: the last 1 llm call(s) timed out"

    asyncio.run(llm.call("probe.sleep", 0))  # the model answers again
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["checks"]["voice_services"] == "ok"


@pytest.mark.django_db
def test_health_under_celery_names_each_service_without_a_live_worker(client, settings):
    """Under Celery the models live in the workers: /health lists them from their heartbeats and is
    503 while a service has no live worker (no device could be answered)."""
    if not settings.REDIS_URL:
        pytest.skip("worker heartbeats live in Redis")
    import uuid

    from voice.workers import heartbeat
    from voice.workers.celery_service import redis_client

    settings.XIAOZHI_WORKER_BACKEND = "celery"
    settings.XIAOZHI_WORKER_QUEUE_PREFIX = prefix = f"health-{uuid.uuid4().hex[:8]}"
    heartbeat.announce(["asr", "llm"], {"asr": ["whisper"], "llm": ["smollm2"], "vad": ["silero"]}, pid=101)
    response = client.get("/health")
    assert response.status_code == 503, response.json()
    checks = response.json()["checks"]
    assert checks["voice_workers"] == f"error: no live worker for tts (queue {prefix}.tts)"
    assert checks["workers"]["asr"][0]["models"] == ["whisper"] and checks["workers"]["asr"][0]["pid"] == 101
    assert checks["workers"]["tts"] == []

    record = heartbeat.announce(["tts"], {"tts": ["piper"]}, pid=102)
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["checks"]["voice_workers"] == "ok"
    assert response.json()["checks"]["workers"]["tts"][0]["models"] == ["piper"]
    key = f"xiaozhi:voice:worker:{prefix}:{record['host']}:102"
    assert 0 < redis_client().ttl(key) <= heartbeat.TTL  # a worker that stops beating drops out by itself
    redis_client().delete(key)  # as if its TTL had run out
    assert client.get("/health").status_code == 503


@pytest.mark.django_db
def test_metrics_prometheus_text(scraper):
    client = scraper
    load_some_figures()
    response = client.get("/metrics")
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "# TYPE xiaozhi_connected_devices gauge" in text
    assert re.search(r"^xiaozhi_connected_devices 3$", text, re.M)
    assert re.search(r"^xiaozhi_ws_messages_in_total 7$", text, re.M)
    assert re.search(r'^xiaozhi_errors_total\{kind="llm"\} 1$', text, re.M)
    assert re.search(r'^xiaozhi_stage_latency_ms\{stage="first_audio_sent_ms",quantile="95"\} ', text, re.M)
    assert "xiaozhi_host_cpu_percent" in text and "xiaozhi_process_resident_memory_bytes{process=" in text
    for line in text.splitlines():  # every sample line is name{labels} number
        assert line.startswith("#") or re.match(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9.e+]+$', line), line


@pytest.mark.django_db
def test_metrics_combine_processes_through_redis(scraper, settings):
    client = scraper
    if not settings.REDIS_URL:
        pytest.skip("several processes are combined through Redis; without it there is one process")
    load_some_figures()
    fake_other_process(settings, devices=5)
    text = client.get("/metrics").content.decode()
    assert re.search(r"^xiaozhi_processes 2$", text, re.M)
    assert re.search(r"^xiaozhi_connected_devices 8$", text, re.M)
    assert re.search(r"^xiaozhi_ws_messages_in_total 17$", text, re.M)
    assert re.search(r'^xiaozhi_process_connected_devices\{process="otherhost:4242"\} 5$', text, re.M)
    assert re.search(r'^xiaozhi_stage_latency_ms\{stage="first_audio_sent_ms",quantile="95"\} 3000$', text, re.M)


@pytest.mark.django_db
def test_dead_process_drops_out(settings):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis")
    settings.XIAOZHI_MONITORING_PUBLISH_SECONDS = 1  # keys live 10 s at least; expire it by hand
    fake_other_process(settings)
    assert aggregate.current()["process_count"] == 2
    aggregate.redis_client().expire(settings.XIAOZHI_MONITORING_REDIS_PREFIX + "otherhost:4242", 1)
    time.sleep(1.2)
    assert aggregate.current()["process_count"] == 1


@pytest.mark.django_db
def test_performance_api(scraper):
    client = scraper
    load_some_figures()
    overall = client.get("/api/performance/").json()
    assert overall["metrics"]["connected_devices"] == 3 and "cpu_percent" in overall["metrics"]
    ws = client.get("/api/performance/websocket/").json()
    assert ws["messages_in"] == 7 and ws["bytes_in"] == 700 and ws["connected_devices"] == 3
    op = client.get("/api/performance/operations/first_audio_sent_ms/").json()
    assert op["kind"] == "stage" and op["count"] == 2 and op["p50"] == 1000.0  # between the two samples
    missing = client.get("/api/performance/operations/nope/")
    assert missing.status_code == 404 and "first_audio_sent_ms" in missing.json()["known"]
    conc = client.get("/api/performance/concurrency/").json()
    assert conc["connected_devices"] == 3 and "services" in conc


@pytest.mark.django_db
def test_reset_needs_auth(client, settings):
    load_some_figures()
    assert client.post("/api/performance/reset/").status_code == 403
    settings.XIAOZHI_MONITORING_API_TOKEN = "s3cret"
    assert client.post("/api/performance/reset/", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.post("/api/performance/reset/", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
    assert live_stats.snapshot()["counters"] == {}


@pytest.mark.django_db
def test_reset_by_staff_session_needs_csrf(staff_client):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.cookies = staff_client.cookies
    assert strict.post("/api/performance/reset/").status_code == 403
    assert staff_client.post("/api/performance/reset/").status_code == 200


@pytest.mark.django_db
def test_dashboard_data_and_page(staff_client):
    from django.test import Client

    load_some_figures()
    for _ in range(3):
        snapshots.take()
    assert Client().get("/monitoring/dashboard/data/").status_code == 302  # staff only
    data = staff_client.get("/monitoring/dashboard/data/?hours=1").json()
    assert data["snapshots"] == 3 and len(data["series"]["t"]) == 3
    assert data["series"]["connected_devices"] == [3, 3, 3]
    assert data["series"]["stages_p95"]["first_audio_sent_ms"][0] == pytest.approx(1090.0)  # voice.percentile of 900, 1100
    from datetime import timedelta

    from django.utils import timezone

    MetricSnapshot.objects.filter(pk=MetricSnapshot.objects.order_by("created_at").first().pk).update(
        created_at=timezone.now() - timedelta(days=2))
    start = (timezone.now() - timedelta(days=3)).isoformat().replace("+00:00", "Z")
    end = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    ranged = staff_client.get("/monitoring/dashboard/data/", {"start": start, "end": end}).json()
    assert ranged["snapshots"] == 1
    assert staff_client.get("/monitoring/dashboard/data/?hours=1").json()["snapshots"] == 2
    page = staff_client.get("/admin/monitoring/metricsnapshot/dashboard/")
    assert page.status_code == 200 and b"linechart.js" in page.content
    assert b"Monitoring dashboard" in staff_client.get("/admin/").content


@pytest.mark.django_db
def test_device_page_shows_recent_turns(staff_client):
    from devices.models import Device, Turn

    device = Device.objects.create(device_id="aa:bb:cc:dd:ee:ff", online=True)
    Turn.objects.create(device=device, user_text="hello there", asr_done_ms=210, first_audio_sent_ms=870)
    page = staff_client.get(f"/admin/devices/device/{device.pk}/change/").content.decode()
    assert "hello there" in page and "870" in page and "Recent turns" in page


@pytest.mark.django_db
def test_snapshot_columns_prune_and_error_rate(settings):
    from datetime import timedelta

    from django.utils import timezone

    from devices.models import Device, Turn

    device = Device.objects.create(device_id="aa:bb:cc:dd:ee:01")
    Turn.objects.create(device=device, error="asr: failed")
    for _ in range(3):
        Turn.objects.create(device=device)
    load_some_figures()
    snap = snapshots.take()
    assert snap.connected_devices == 3 and snap.error_rate == 25.0 and snap.ttfa_p95_ms == pytest.approx(1090.0)
    assert snap.cpu_percent is not None and snap.metrics["system"]["hosts"]
    settings.XIAOZHI_MONITORING_RETENTION_DAYS = 7
    MetricSnapshot.objects.filter(pk=snap.pk).update(created_at=timezone.now() - timedelta(days=8))
    snapshots.take()
    assert snapshots.prune() == 1 and MetricSnapshot.objects.count() == 1


@pytest.mark.django_db
def test_perfreport(tmp_path):
    from django.core.management import call_command

    load_some_figures()
    out = tmp_path / "report.json"
    call_command("perfreport", "--duration", "0.6", "--interval", "0.2", "--output", str(out))
    report = json.loads(out.read_text())
    assert report["samples_taken"] >= 3
    assert report["summary"]["connected_devices"]["max"] == 3
    assert "first_audio_sent_ms" in report["final"]["latency_ms"]


@pytest.mark.django_db(transaction=True)
def test_scheduler_writes_snapshots_and_evaluates(settings):
    from monitoring import scheduler
    from monitoring.models import Alert, AlertRule

    settings.XIAOZHI_MONITORING_SCHEDULER = "on"
    settings.XIAOZHI_MONITORING_SNAPSHOT_SECONDS = 1
    settings.XIAOZHI_MONITORING_PUBLISH_SECONDS = 1
    AlertRule.objects.filter(metric="connected_devices").update(threshold=2)
    live_stats.gauge_add("connected_devices", 3)
    thread = scheduler.start_if_configured()
    assert scheduler.start_if_configured() is thread  # once per process
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not (MetricSnapshot.objects.count() >= 2 and Alert.objects.exists()):
            time.sleep(0.2)
    finally:
        scheduler.stop()
        thread.join(5)
    assert MetricSnapshot.objects.count() >= 2
    assert Alert.objects.get().rule.metric == "connected_devices"


def test_scheduler_off_never_starts(settings):
    from monitoring import scheduler

    settings.XIAOZHI_MONITORING_SCHEDULER = "off"
    assert scheduler.start_if_configured() is None


@pytest.mark.django_db
def test_celery_tasks_snapshot_evaluate_prune(staff_client):
    from monitoring import tasks
    from monitoring.models import Alert, AlertRule

    AlertRule.objects.filter(metric="connected_devices").update(threshold=2)
    live_stats.gauge_add("connected_devices", 3)
    aggregate.publish()  # as the server process's scheduler thread does
    pk = tasks.snapshot()
    assert MetricSnapshot.objects.get(pk=pk).connected_devices == 3
    tasks.evaluate_all()
    alert = Alert.objects.get(status=Alert.OPEN)
    assert tasks.prune() == 0
    index = staff_client.get("/admin/").content.decode()
    assert "monitoring-open-alerts" in index and escape(alert.message) in index

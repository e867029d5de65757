"""The admin in a real headless Chromium: log in, see the dashboard charts drawn from stored snapshots,
edit an alert threshold and save; the next evaluation uses it. Screenshots go to test-artifacts/."""
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.utils import timezone

from monitoring import aggregate, alerts, evaluation, snapshots
from monitoring.models import AlertRule, MetricSnapshot
from voice import live_stats
from voice.pipeline.turn_row import TurnRow

CHROMIUM = os.environ.get("XIAOZHI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(django_settings.BASE_DIR) / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def real_snapshots(count: int = 8) -> None:
    """Snapshots taken by the real code under changing load, then spread over the last 38 minutes (3 in the last 15)."""
    for i in range(count):
        live_stats.gauge_add("connected_devices", 5)
        live_stats.turn_finished(TurnRow(asr_done_ms=150.0 + 10 * i, llm_first_token_ms=400.0 + 30 * i,
                                         first_sentence_ms=600.0 + 40 * i, tts_first_audio_ms=750.0 + 40 * i,
                                         first_audio_sent_ms=800.0 + 50 * i))
        snap = snapshots.take()
        MetricSnapshot.objects.filter(pk=snap.pk).update(created_at=timezone.now() - timedelta(minutes=5 * (count - i) - 2))


def test_dashboard_and_threshold_edit_in_chromium(live_server, monkeypatch):
    # `make test` installs Debian's chromium; a missing browser is a set-up failure, not a skip.
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is not installed: apt-get install chromium (make setup does it)"
    from playwright import sync_api
    # Playwright's sync API keeps an event loop in this thread; the ORM calls here are between its steps.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    User.objects.create_superuser("admin", "admin@example.com", "browser-pass-123")
    real_snapshots()
    rule = AlertRule.objects.get(metric="connected_devices")
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", "browser-pass-123")
            page.click("input[type=submit]")
            page.click("#monitoring-dashboard-link a")
            page.wait_for_selector('#monitoring-dashboard[data-loaded="8"]', timeout=15000)
            for chart in ("ttfa", "stages", "devices", "system", "errors"):
                assert page.locator(f"#chart-{chart} path.lc-line").count() >= 1, chart
            assert page.locator("#chart-stages path.lc-line").count() == 5
            assert page.locator("#chart-devices circle").count() == 8
            page.screenshot(path=str(ARTIFACTS / "monitoring-dashboard.png"), full_page=True)
            assert not [u for u in failed if "/static/" in u], failed

            page.select_option("#range", "0.25")  # the last 15 minutes hold 3 of the snapshots
            page.wait_for_selector('#monitoring-dashboard[data-loaded="3"]', timeout=15000)

            page.goto(f"{live_server.url}/admin/monitoring/alertrule/{rule.pk}/change/")
            page.fill("#id_threshold", "30")
            page.click("input[name=_save]")
            page.wait_for_selector(".messagelist .success", timeout=15000)
            page.screenshot(path=str(ARTIFACTS / "monitoring-alert-rule-saved.png"), full_page=True)
        finally:
            browser.close()

    assert AlertRule.objects.get(pk=rule.pk).threshold == 30
    combined = aggregate.current()
    assert combined["flat"]["connected_devices"] == 40
    assert alerts.evaluate_rule(rule.pk, combined) == evaluation.OPEN  # no restart needed
    assert (ARTIFACTS / "monitoring-dashboard.png").stat().st_size > 10000

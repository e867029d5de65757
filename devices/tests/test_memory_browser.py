"""The device page in a real headless Chromium: the memory the server stored is shown, the owner
edits it and saves, then clears it with the list's action. Screenshots go to test-artifacts/."""
import os
import shutil
from pathlib import Path

from django.conf import settings as django_settings
from django.contrib.auth.models import User

from devices.models import Device

CHROMIUM = os.environ.get("XIAOZHI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(django_settings.BASE_DIR) / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
REMEMBERED = "The user's name is Ana. The user loves jazz."
EDITED = "The user's name is Ana. The user loves jazz and tea."


def test_the_device_page_shows_edits_and_clears_the_memory_in_chromium(live_server, monkeypatch, settings):
    # `make test` installs Debian's chromium; a missing browser is a set-up failure, not a skip.
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is not installed: apt-get install chromium (make setup does it)"
    from playwright import sync_api

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls between Playwright's steps
    settings.XIAOZHI_MEMORY_MAX_CHARS = 200
    User.objects.create_superuser("admin", "admin@example.com", "browser-pass-123")
    # What voice.memory stores at the end of a session (its own tests cover how it gets there).
    from voice.memory import merge_extracted

    device = Device.objects.create(device_id="aa:bb:cc:dd:00:01", activated=True,
                                   memory=merge_extracted("", (("My name is Ana and I love jazz.", ""),), 200))
    assert device.memory == REMEMBERED
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/devices/device/{device.pk}/change/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", "browser-pass-123")
            page.click("input[type=submit]")
            memory = page.locator("#id_memory")
            memory.wait_for(timeout=15000)
            assert memory.input_value() == REMEMBERED
            assert memory.get_attribute("maxlength") == "200"
            page.screenshot(path=str(ARTIFACTS / "device-memory.png"), full_page=True)

            memory.fill(EDITED)
            page.click("input[name=_continue]")
            page.wait_for_selector(".messagelist .success", timeout=15000)
            assert page.locator("#id_memory").input_value() == EDITED
            device.refresh_from_db()
            assert device.memory == EDITED and device.memory_updated_at is not None

            page.goto(f"{live_server.url}/admin/devices/device/")
            page.check(f"input[name=_selected_action][value='{device.pk}']")
            page.select_option("select[name=action]", "clear_memory")
            page.click("button[name=index]")
            page.wait_for_selector(".messagelist .success", timeout=15000)
            assert "Memory of 1 device(s) cleared." in page.locator(".messagelist").inner_text()
            page.screenshot(path=str(ARTIFACTS / "device-memory-cleared.png"), full_page=True)
            page.goto(f"{live_server.url}/admin/devices/device/{device.pk}/change/")
            assert page.locator("#id_memory").input_value() == ""
        finally:
            browser.close()

    device.refresh_from_db()
    assert device.memory == ""
    assert (ARTIFACTS / "device-memory.png").stat().st_size > 10000

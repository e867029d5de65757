"""Messages from the admin to a device's live connection (devices/device_commands.py): an alert,
a reboot, a tool called by hand, each posted through the Django admin and carried over the channel
layer to the consumer that holds the device's session. First with the in-memory layer in this
process (Channels' communicator), then across processes: a real server process and this one
sharing Redis, the admin request running here."""
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from channels.db import database_sync_to_async
from django.test import Client

from devices import device_commands
from devices.models import Device
from voice.mcp.firmware import FIRMWARE_TOOLS
from voice.protocol import Alert, Mcp, System, encode

ROOT = Path(__file__).resolve().parents[2]
DEVICES_URL = "/admin/devices/device/"
ADMIN_PASSWORD = "commands-pass-123"


class FirmwareMcp:
    """The device's side of MCP, driven by the test: answers ``initialize`` and ``tools/list`` as
    the firmware does, and answers each ``tools/call`` with ``answer(name, arguments)`` (a
    JSON-RPC result or error body), recording the calls it received."""

    def __init__(self, device, answer=None):
        self.device = device
        # The device must have been connected with answers_mcp=False (before its hello, or its own
        # firmware tools race this helper to answer initialize and tools/list).
        assert not device.answers_mcp, "connect the device with answers_mcp=False"
        self.answer = answer or (lambda name, arguments: {"result": {
            "content": [{"type": "text", "text": f"{name} done"}], "isError": False}})
        self.calls: list[tuple[str, dict]] = []
        self.listed = asyncio.Event()
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        seen = 0
        while True:
            event = await self.device.wait_for(lambda e: isinstance(e.message, Mcp), 3600, seen)
            # by identity: two equal events (the same request twice) must not send this back in time
            seen = next(i for i in range(seen, len(self.device.events)) if self.device.events[i] is event) + 1
            request = event.message.payload
            method, msg_id = request.get("method"), request.get("id")
            if method == "initialize":
                body = {"result": {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                                   "serverInfo": {"name": "test-board", "version": "1.9.0"}}}
            elif method == "tools/list":
                body = {"result": {"tools": list(FIRMWARE_TOOLS)}}
            elif method == "tools/call":
                params = request["params"]
                self.calls.append((params["name"], params["arguments"]))
                body = self.answer(params["name"], params["arguments"])
            else:
                body = {"error": {"message": f"Method not implemented: {method}"}}
            await self.device.send_json(encode(Mcp({"jsonrpc": "2.0", "id": msg_id, **body})))
            if method == "tools/list":
                self.listed.set()

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
def staff(transactional_db):
    from django.contrib.auth.models import User

    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


async def post(client, url, data=None):
    # A thread of the request's own, as Django's ASGI handler gives each request: the consumers'
    # sync work (Channels closes old DB connections before each message) runs on the process's
    # shared thread, which a waiting admin view must not hold.
    async with ThreadSensitiveContext():
        return await sync_to_async(client.post)(url, data or {}, follow=True)


async def get(client, url):
    async with ThreadSensitiveContext():
        return await sync_to_async(client.get)(url)


async def pk_of(device) -> int:
    return (await database_sync_to_async(Device.objects.get)(device_id=device.device_id)).pk


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


async def received(device, kind, timeout=5):
    return (await device.wait_for(lambda e: isinstance(e.message, kind), timeout)).message


# -- in this process: the in-memory channel layer ---------------------------------------------------------
async def test_the_device_page_sends_an_alert_with_all_three_fields(connect_device, staff):
    device = await connect_device()
    pk = await pk_of(device)
    page = await get(staff, f"{DEVICES_URL}{pk}/change/")
    assert f"{DEVICES_URL}{pk}/alert/" in page.content.decode()  # the device page links to it
    response = await post(staff, f"{DEVICES_URL}{pk}/alert/",
                          {"status": "Notice", "message": "Dinner is ready", "emotion": "happy"})
    alert = await received(device, Alert)
    assert (alert.status, alert.message, alert.emotion) == ("Notice", "Dinner is ready", "happy")
    assert page_messages(response) == [f"{device.device_id}: Alert sent."]


async def test_an_alert_without_a_message_is_refused_by_the_form(connect_device, staff):
    device = await connect_device()
    pk = await pk_of(device)
    response = await post(staff, f"{DEVICES_URL}{pk}/alert/", {"status": "Notice", "message": "", "emotion": "happy"})
    assert response.status_code == 200 and "This field is required" in response.content.decode()
    await asyncio.sleep(0.3)
    assert not any(isinstance(e.message, Alert) for e in device.events)


async def test_the_device_page_reboots_a_device(connect_device, staff):
    device = await connect_device()
    pk = await pk_of(device)
    assert (await get(staff, f"{DEVICES_URL}{pk}/reboot/")).status_code == 200  # the confirmation page
    response = await post(staff, f"{DEVICES_URL}{pk}/reboot/")
    system = await received(device, System)
    assert system.command == "reboot"
    assert json.loads(encode(system)) == {"type": "system", "command": "reboot"}
    assert page_messages(response) == [f"{device.device_id}: Reboot requested."]


async def test_the_list_actions_alert_and_reboot_the_selected_devices(connect_device, staff):
    first, second = await connect_device(), await connect_device()
    pks = [await pk_of(first), await pk_of(second)]
    listing = (await get(staff, DEVICES_URL)).content.decode()
    assert all(f"{DEVICES_URL}{pk}/{page}/" in listing for pk in pks for page in ("alert", "reboot", "tool"))
    form = await post(staff, DEVICES_URL, {"action": "send_alert", "_selected_action": pks})
    assert "Send alert" in form.content.decode() and "status" in form.content.decode()  # the form comes first
    await post(staff, DEVICES_URL, {"action": "send_alert", "_selected_action": pks, "apply": "1",
                                    "status": "Update", "message": "Back in five minutes", "emotion": "neutral"})
    for device in (first, second):
        alert = await received(device, Alert)
        assert (alert.status, alert.message, alert.emotion) == ("Update", "Back in five minutes", "neutral")
    await post(staff, DEVICES_URL, {"action": "reboot", "_selected_action": pks[:1]})
    assert (await received(first, System)).command == "reboot"
    await asyncio.sleep(0.3)
    assert not any(isinstance(e.message, System) for e in second.events)


async def test_a_tool_called_by_hand_returns_the_devices_answer(connect_device, staff):
    device = await connect_device(answers_mcp=False)
    mcp = FirmwareMcp(device, answer=lambda name, arguments: {"result": {
        "content": [{"type": "text", "text": f"volume is now {arguments['volume']}"}], "isError": False}})
    try:
        async with asyncio.timeout(10):
            await mcp.listed.wait()
        pk = await pk_of(device)
        page = await get(staff, f"{DEVICES_URL}{pk}/tool/")
        html = page.content.decode()
        assert all(tool["name"] in html for tool in FIRMWARE_TOOLS)  # the live connection's tools to choose from
        response = await post(staff, f"{DEVICES_URL}{pk}/tool/",
                              {"tool": "self.audio_speaker.set_volume", "arguments": '{"volume": 30}'})
        assert mcp.calls == [("self.audio_speaker.set_volume", {"volume": 30})]
        result = response.context["result"]
        assert result.ok and result.text == "volume is now 30"
        assert "volume is now 30" in response.content.decode()
    finally:
        mcp.stop()


async def test_a_tool_error_is_shown_as_an_error(connect_device, staff):
    device = await connect_device(answers_mcp=False)
    mcp = FirmwareMcp(device, answer=lambda name, arguments: {"error": {"message": "Missing valid argument: volume"}})
    try:
        async with asyncio.timeout(10):
            await mcp.listed.wait()
        pk = await pk_of(device)
        response = await post(staff, f"{DEVICES_URL}{pk}/tool/", {"tool": "self.audio_speaker.set_volume",
                                                                 "arguments": "{}"})
        result = response.context["result"]
        assert not result.ok and "Missing valid argument: volume" in result.text
        assert "tool-error" in response.content.decode()
        # arguments that are not a JSON object never reach the device
        response = await post(staff, f"{DEVICES_URL}{pk}/tool/", {"tool": "self.audio_speaker.set_volume",
                                                                 "arguments": "[30]"})
        assert "must be a JSON object" in response.content.decode() and len(mcp.calls) == 1
    finally:
        mcp.stop()


async def test_a_device_that_is_not_connected_gets_a_clear_message(staff):
    # Marked online (as a server that died would leave it), but no live connection holds it.
    device = await database_sync_to_async(Device.objects.create)(device_id="aa:bb:cc:dd:ee:99", online=True)
    response = await post(staff, f"{DEVICES_URL}{device.pk}/alert/",
                          {"status": "Notice", "message": "Hello", "emotion": "happy"})
    assert page_messages(response) == [f"aa:bb:cc:dd:ee:99: {device_commands.NOT_CONNECTED} "
                                       f"(no live connection answered within 2 s)"]
    response = await post(staff, f"{DEVICES_URL}{device.pk}/reboot/")
    assert device_commands.NOT_CONNECTED in page_messages(response)[0]
    page = await get(staff, f"{DEVICES_URL}{device.pk}/tool/")
    assert device_commands.NOT_CONNECTED in page.content.decode()


# -- across processes: a real server process and this one share Redis ---------------------------------------
def started(start_server, name: str):
    """``python -m xiaozhi.server`` with the scripted fake models (and this run's Redis, if set) and an
    administrator; yields its host:port."""
    env = dict(XIAOZHI_PRELOAD_MODELS="false", XIAOZHI_WORKER_BACKEND="local", XIAOZHI_ASR_PROVIDER="fake",
               XIAOZHI_LLM_PROVIDER="fake", XIAOZHI_TTS_PROVIDER="fake", XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1",
               XIAOZHI_MONITORING_SCHEDULER="off")
    with start_server(name, startup_timeout=120, **env) as running:
        subprocess.run([sys.executable, "manage.py", "shell", "-c",
                        "from django.contrib.auth.models import User\n"
                        f"User.objects.filter(username='admin').exists() or "
                        f"User.objects.create_superuser('admin', 'admin@example.com', '{ADMIN_PASSWORD}')"],
                       cwd=ROOT, env=running.env, check=True, capture_output=True)
        yield running.host


@pytest.fixture(scope="module")
def server(start_server):
    """The server process, on the Redis this process uses too."""
    from django.conf import settings

    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (the channel layer the processes share; CI always sets it)")
    yield from started(start_server, "commands")


@pytest.fixture
async def remote_device(server, transactional_db):
    """A device connected to the server process; its Device row here is the admin's (this process's
    database is not the server's)."""
    from loadtest.simulated_device import SimulatedDevice

    device = SimulatedDevice()
    device.answers_mcp = False  # the tests answer its MCP (FirmwareMcp)
    assert await device.connect(f"ws://{server}/xiaozhi/v1/")
    row = await database_sync_to_async(Device.objects.create)(device_id=device.device_id, online=True)
    yield device, row.pk
    await device.close()


@pytest.mark.e2e
async def test_across_processes_the_alert_and_the_reboot_reach_the_device(remote_device, staff):
    device, pk = remote_device
    response = await post(staff, f"{DEVICES_URL}{pk}/alert/",
                          {"status": "Notice", "message": "From another process", "emotion": "cool"})
    alert = await received(device, Alert)
    assert (alert.status, alert.message, alert.emotion) == ("Notice", "From another process", "cool")
    assert page_messages(response) == [f"{device.device_id}: Alert sent."]
    response = await post(staff, f"{DEVICES_URL}{pk}/reboot/")
    assert (await received(device, System)).command == "reboot"


@pytest.mark.e2e
async def test_across_processes_a_command_is_answered_while_this_process_serves_a_device(
        remote_device, connect_device, staff):
    """The admin's process holds a device of its own, whose consumer waits on the channel layer.
    channels-redis lets one receive at a time read a process's messages from Redis, for the other
    waiters of that process: the admin's reply channel must be one that reader reads, or the other
    process's answer is never picked up and the device is reported "not connected"."""
    await connect_device()  # served here: its consumer is receiving before the admin asks
    device, pk = remote_device
    response = await post(staff, f"{DEVICES_URL}{pk}/reboot/")
    assert (await received(device, System)).command == "reboot"
    assert page_messages(response) == [f"{device.device_id}: Reboot requested."]


@pytest.mark.e2e
async def test_across_processes_a_tool_call_returns_the_devices_answer(remote_device, staff):
    device, pk = remote_device
    mcp = FirmwareMcp(device, answer=lambda name, arguments: {"result": {
        "content": [{"type": "text", "text": "brightness is now 70"}], "isError": False}})
    try:
        async with asyncio.timeout(10):
            await mcp.listed.wait()
        response = await post(staff, f"{DEVICES_URL}{pk}/tool/",
                              {"tool": "self.screen.set_brightness", "arguments": '{"brightness": 70}'})
        assert mcp.calls == [("self.screen.set_brightness", {"brightness": 70})]
        assert response.context["result"].ok and response.context["result"].text == "brightness is now 70"
    finally:
        mcp.stop()


@pytest.mark.e2e
async def test_across_processes_a_disconnected_device_is_reported(remote_device, staff):
    device, pk = remote_device
    await device.close()
    async with asyncio.timeout(10):  # until the server process has seen the socket close
        while True:
            try:
                await device_commands.ask(device.device_id, {"command": "list_tools"})
            except device_commands.DeviceNotConnected:
                break
    response = await post(staff, f"{DEVICES_URL}{pk}/alert/", {"status": "a", "message": "b", "emotion": "happy"})
    assert device_commands.NOT_CONNECTED in page_messages(response)[0]


# -- in a real browser, against the server process ------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_server(start_server):
    """The server process on its own (admin and device in the same process: no Redis needed)."""
    yield from started(start_server, "browser")


@pytest.mark.e2e
async def test_in_chromium_an_admin_alerts_a_device_and_calls_its_tool(browser_server):
    import shutil

    from django.conf import settings
    from playwright.async_api import async_playwright

    from loadtest.simulated_device import SimulatedDevice

    chromium = os.environ.get("XIAOZHI_CHROMIUM", "/usr/bin/chromium")
    # `make test` installs Debian's chromium; a missing browser is a set-up failure, not a skip.
    assert shutil.which(chromium), f"{chromium} is not installed: apt-get install chromium (make setup does it)"
    artifacts = Path(settings.BASE_DIR) / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    device = SimulatedDevice()
    device.answers_mcp = False  # the test answers its MCP (FirmwareMcp)
    assert await device.connect(f"ws://{browser_server}/xiaozhi/v1/")
    mcp = FirmwareMcp(device, answer=lambda name, arguments: {"result": {
        "content": [{"type": "text", "text": f"volume is now {arguments.get('volume')}"}], "isError": False}})
    base = f"http://{browser_server}"
    try:
        async with asyncio.timeout(10):
            await mcp.listed.wait()
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                await page.goto(f"{base}/admin/login/?next={DEVICES_URL}")
                await page.fill("#id_username", "admin")
                await page.fill("#id_password", ADMIN_PASSWORD)
                await page.click("input[type=submit]")
                await page.goto(f"{base}{DEVICES_URL}?q={device.device_id}")
                row = page.locator("#result_list tbody tr", has_text=device.device_id)
                await row.get_by_role("link", name="Alert").click()
                await page.fill("#id_status", "Notice")
                await page.fill("#id_message", "Dinner is ready")
                await page.select_option("#id_emotion", "happy")
                await page.click("input[type=submit][value='Send alert']")
                await page.wait_for_selector(".messagelist .success", timeout=15000)
                alert = await received(device, Alert)
                assert (alert.status, alert.message, alert.emotion) == ("Notice", "Dinner is ready", "happy")

                # back on the device page (where the alert form returned): call a tool
                await page.get_by_role("link", name="Call a tool").click()
                await page.select_option("#id_tool", "self.audio_speaker.set_volume")
                await page.fill("#id_arguments", '{"volume": 30}')
                await page.click("input[type=submit][value='Call']")
                result = await page.wait_for_selector("pre.tool-result", timeout=40000)
                assert (await result.inner_text()) == "volume is now 30"
                assert mcp.calls == [("self.audio_speaker.set_volume", {"volume": 30})]
                await page.screenshot(path=str(artifacts / "device-tool-call.png"), full_page=True)
            finally:
                await browser.close()
    finally:
        mcp.stop()
        await device.close()


# -- the consumer's side on its own: a scripted session, the real in-memory layer ---------------------------
async def answers_to(session, command: dict) -> list[dict]:
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    reply_to = await layer.new_channel()
    await device_commands.handle(session, {"type": device_commands.COMMAND, "reply_to": reply_to, **command}, layer)
    got = [await layer.receive(reply_to)]
    if got[0].get("accepted"):
        async with asyncio.timeout(5):
            got.append(await layer.receive(reply_to))
    return got


async def test_bad_commands_get_a_clear_answer_and_nothing_reaches_the_device():
    from voice.tests.harness import Conversation

    async with Conversation() as c:  # a hello without features.mcp
        sent = len(c.sent)
        [missing] = await answers_to(c.session, {"command": "alert", "status": "Notice", "message": "", "emotion": "happy"})
        assert not missing["ok"] and "status, message and emotion" in missing["text"]
        [unknown] = await answers_to(c.session, {"command": "selfdestruct"})
        assert not unknown["ok"] and "unknown command" in unknown["text"]
        [no_tools] = await answers_to(c.session, {"command": "list_tools"})
        assert no_tools["ok"] and no_tools["tools"] == []
        accepted, result = await answers_to(c.session, {"command": "call_tool", "name": "self.reboot", "arguments": {}})
        assert accepted["accepted"] and not result["ok"] and "does not speak MCP" in result["text"]
        [bad_args] = await answers_to(c.session, {"command": "call_tool", "name": "x", "arguments": [1]})
        assert not bad_args["ok"] and "arguments object" in bad_args["text"]
        assert c.sent[sent:] == []


async def test_a_session_before_its_hello_does_not_answer():
    from channels.layers import InMemoryChannelLayer

    from voice.tests.harness import Conversation

    async with Conversation(hello=False) as c:
        layer = InMemoryChannelLayer()
        reply_to = await layer.new_channel()
        await device_commands.handle(c.session, {"type": device_commands.COMMAND, "reply_to": reply_to,
                                                 "command": "reboot"}, layer)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await layer.receive(reply_to)
        assert c.sent == []

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import AgentConfig, Device, DeviceSession, Turn

pytestmark = pytest.mark.django_db

DEVICES_URL = "/admin/devices/device/"


@pytest.fixture
def devices():
    agent = AgentConfig.objects.create(name="Tutor")
    online = Device.objects.create(
        device_id="aa:aa:aa:aa:aa:01", board="esp-box-3", online=True, activated=True, agent=agent
    )
    offline = Device.objects.create(device_id="aa:aa:aa:aa:aa:02", board="bread-compact-wifi", client_id="uuid-xyz")
    return agent, online, offline


def listed(response):
    html = response.content.decode()
    return {device_id for device_id in ("aa:aa:aa:aa:aa:01", "aa:aa:aa:aa:aa:02") if device_id in html}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("online__exact=1", {"aa:aa:aa:aa:aa:01"}),
        ("activated__exact=0", {"aa:aa:aa:aa:aa:02"}),
        ("q=compact", {"aa:aa:aa:aa:aa:02"}),
        ("q=uuid-xyz", {"aa:aa:aa:aa:aa:02"}),
        ("q=aa:aa:aa:aa:aa:01", {"aa:aa:aa:aa:aa:01"}),
    ],
)
def test_the_device_list_filters_and_searches(admin_client, devices, query, expected):
    response = admin_client.get(f"{DEVICES_URL}?{query}")
    assert response.status_code == 200
    assert listed(response) == expected


def test_the_device_list_filters_by_agent(admin_client, devices):
    agent = devices[0]
    assert listed(admin_client.get(f"{DEVICES_URL}?agent__id__exact={agent.pk}")) == {"aa:aa:aa:aa:aa:01"}


def test_the_device_list_links_to_the_bind_page(admin_client, devices):
    assert "/admin/devices/device/bind/" in admin_client.get(DEVICES_URL).content.decode()


def test_the_bind_page_binds_a_waiting_device(admin_client, devices):
    waiting = devices[2]
    waiting.activation_code, waiting.activation_code_expires_at = "246810", timezone.now() + timedelta(hours=1)
    waiting.save()
    assert admin_client.get("/admin/devices/device/bind/").status_code == 200

    response = admin_client.post("/admin/devices/device/bind/", {"code": "246810", "agent": ""})

    assert response.status_code == 302
    waiting.refresh_from_db()
    assert waiting.activated and waiting.activation_code == ""


@pytest.mark.parametrize("code, error", [("999999", "No device is waiting"), ("12x", "6 digits")])
def test_the_bind_page_shows_the_error_for_a_bad_code(admin_client, devices, code, error):
    response = admin_client.post("/admin/devices/device/bind/", {"code": code})
    assert response.status_code == 200
    assert error in response.content.decode()


def test_the_mark_activated_action_activates_the_selection(admin_client, devices):
    offline = devices[2]
    response = admin_client.post(DEVICES_URL, {"action": "mark_activated", "_selected_action": [offline.pk]})
    assert response.status_code == 302
    offline.refresh_from_db()
    assert offline.activated


def test_the_activation_code_is_read_only(admin_client, devices):
    html = admin_client.get(f"{DEVICES_URL}{devices[2].pk}/change/").content.decode()
    assert 'name="activation_code"' not in html


@pytest.mark.parametrize(
    "url",
    [
        "/admin/devices/device/",
        "/admin/devices/devicesession/",
        "/admin/devices/devicesession/?status=open",
        "/admin/devices/devicesession/?status=closed",
        "/admin/devices/agentconfig/",
        "/admin/devices/agentconfig/add/",
        "/admin/devices/turn/",
        "/admin/devices/turn/?q=你好",
    ],
)
def test_each_admin_page_loads(admin_client, devices, url):
    device = devices[1]
    session = DeviceSession.objects.create(device=device, session_id="5b4f9a3e-1111-4c8a-9d57-0123456789ab")
    Turn.objects.create(device=device, session=session, user_text="你好", reply_text="你好 😊", first_audio_sent_ms=412.5)
    assert admin_client.get(url).status_code == 200

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import AgentConfig, Device
from devices.records import bind_activation_code

MAC = "aa:bb:cc:dd:ee:ff"
BIND_URL = "/admin/devices/device/bind/"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def activation_required(settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    settings.XIAOZHI_ACTIVATION_URL = "https://xiaozhi.example/admin/"
    settings.XIAOZHI_ACTIVATION_CODE_TTL_SECONDS = 3600


def poll(client, path="/xiaozhi/ota/", mac=MAC):
    body = json.dumps({"application": {"version": "1.6.2"}})
    return client.post(path, data=body, content_type="application/json", headers={"Device-Id": mac})


def test_a_new_device_gets_an_activation_code_that_is_reused_across_polls(client):
    first = poll(client).json()["activation"]
    assert first["code"].isdigit() and len(first["code"]) == 6
    assert first["message"] == f"https://xiaozhi.example/admin/\n{first['code']}"
    assert (first["challenge"], first["timeout_ms"]) == (MAC, 30000)
    assert poll(client).json()["activation"] == first
    assert "websocket" in poll(client).json()


def test_the_device_polls_202_until_bound_in_the_admin_then_200(client, admin_client):
    code = poll(client).json()["activation"]["code"]
    assert poll(client, "/xiaozhi/ota/activate").status_code == 202
    agent = AgentConfig.objects.create(name="Tutor")

    response = admin_client.post(BIND_URL, {"code": code, "agent": agent.pk}, follow=True)

    assert f"Device {MAC} activated" in response.content.decode()
    assert response.redirect_chain[-1][0].endswith("/admin/devices/device/")
    device = Device.objects.get(device_id=MAC)
    assert (device.activated, device.activation_code, device.agent) == (True, "", agent)
    assert poll(client, "/xiaozhi/ota/activate/").status_code == 200
    assert "activation" not in poll(client).json()


def test_an_expired_code_is_replaced_on_the_next_poll(client):
    old = poll(client).json()["activation"]["code"]
    Device.objects.filter(device_id=MAC).update(activation_code_expires_at=timezone.now() - timedelta(seconds=1))
    new = poll(client).json()["activation"]["code"]
    assert new != old
    assert Device.objects.get(device_id=MAC).activation_code_expires_at > timezone.now()


def test_an_expired_code_cannot_be_bound(client):
    code = poll(client).json()["activation"]["code"]
    Device.objects.filter(device_id=MAC).update(activation_code_expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ValueError, match="expired"):
        bind_activation_code(code)


def test_an_unknown_code_is_an_error_and_binds_nothing(client):
    poll(client)
    with pytest.raises(ValueError, match="No device"):
        bind_activation_code("000000" if Device.objects.get().activation_code != "000000" else "111111")
    with pytest.raises(ValueError, match="6 digits"):
        bind_activation_code("12ab")
    assert not Device.objects.get().activated


def test_the_activate_poll_is_404_for_an_unknown_device_and_400_without_an_id(client):
    assert poll(client, "/xiaozhi/ota/activate", mac="11:22:33:44:55:66").status_code == 404
    assert client.post("/xiaozhi/ota/activate", data="{}", content_type="application/json").status_code == 400


def test_without_required_activation_there_is_no_activation_key(client, settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = False
    assert "activation" not in poll(client).json()
    assert Device.objects.get(device_id=MAC).activated
    assert poll(client, "/xiaozhi/ota/activate").status_code == 200

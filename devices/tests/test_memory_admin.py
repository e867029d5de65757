"""The device page shows and edits the device's memory within its bound; an action clears it; an
agent's switch decides whether its devices keep one (and their sessions get it)."""
import pytest

from devices import records
from devices.auth import DeviceIdentity
from devices.models import AgentConfig, Device

pytestmark = pytest.mark.django_db

DEVICES_URL = "/admin/devices/device/"
MEMORY = "The user's name is Ana. The user loves jazz."


@pytest.fixture
def device():
    return Device.objects.create(device_id="aa:aa:aa:aa:bb:01", activated=True, memory=MEMORY)


def change_form(device, **changes):
    return {"device_id": device.device_id, "client_id": "", "board": "", "firmware_version": "",
            "activated": "on", "agent": "", "memory": device.memory, **changes}


def test_the_device_page_shows_the_memory_in_a_bounded_text_box(admin_client, device, settings):
    settings.XIAOZHI_MEMORY_MAX_CHARS = 120
    html = admin_client.get(f"{DEVICES_URL}{device.pk}/change/").content.decode()
    assert MEMORY.replace("'", "&#x27;") in html
    assert 'maxlength="120"' in html and "At most 120 characters" in html


def test_the_memory_can_be_edited_and_an_edit_past_the_bound_is_refused(admin_client, device, settings):
    settings.XIAOZHI_MEMORY_MAX_CHARS = 60
    url = f"{DEVICES_URL}{device.pk}/change/"
    assert admin_client.post(url, change_form(device, memory="The user's name is Ana.")).status_code == 302
    device.refresh_from_db()
    assert device.memory == "The user's name is Ana."
    response = admin_client.post(url, change_form(device, memory="x" * 61))
    assert response.status_code == 200 and "at most 60 characters" in response.content.decode()
    device.refresh_from_db()
    assert device.memory == "The user's name is Ana."


def test_the_clear_memory_action_clears_only_the_selection(admin_client, device):
    other = Device.objects.create(device_id="aa:aa:aa:aa:bb:02", memory="The user likes tea.")
    response = admin_client.post(DEVICES_URL, {"action": "clear_memory", "_selected_action": [device.pk]}, follow=True)
    assert "Memory of 1 device(s) cleared." in response.content.decode()
    device.refresh_from_db()
    other.refresh_from_db()
    assert device.memory == "" and device.memory_updated_at is not None
    assert other.memory == "The user likes tea."


def connect(device):
    return records.register_connection(DeviceIdentity(device_id=device.device_id, client_id="c", protocol_version_header=None, remote_addr="x"), 1)


def test_a_connection_gets_the_memory_when_its_agent_keeps_one_and_not_otherwise(device, settings):
    assert connect(device).memory == MEMORY  # no agent at all: XIAOZHI_MEMORY_ENABLED (on)
    settings.XIAOZHI_MEMORY_ENABLED = False
    assert connect(device).memory == ""
    device.agent = AgentConfig.objects.create(name="Tutor")  # on by default
    device.save()
    info = connect(device)
    assert info.memory == MEMORY and info.agent["memory_enabled"] is True
    AgentConfig.objects.filter(pk=device.agent.pk).update(memory_enabled=False)
    info = connect(device)
    assert info.memory == "" and info.agent["memory_enabled"] is False

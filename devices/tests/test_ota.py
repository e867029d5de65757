import json

import pytest

from devices.models import Device
from devices.tokens import verify_token

MAC = "aa:bb:cc:dd:ee:ff"
BODY = {
    "version": 2,
    "mac_address": MAC,
    "application": {"name": "xiaozhi", "version": "1.6.2"},
    "board": {"type": "bread-compact-wifi", "mac": MAC},
}

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def plain_server(settings):
    settings.XIAOZHI_AUTH_ENABLED = False
    settings.XIAOZHI_ACTIVATION_REQUIRED = False
    settings.XIAOZHI_WEBSOCKET_URL = ""
    settings.XIAOZHI_BINARY_PROTOCOL_VERSION = 1
    settings.XIAOZHI_TIMEZONE_OFFSET_MINUTES = 480


def post(client, body=BODY, path="/xiaozhi/ota/", **headers):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers.setdefault("Device-Id", MAC)
    headers = {k: v for k, v in headers.items() if v is not None}
    return client.post(path, data=data, content_type="application/json", headers=headers)


def test_a_device_gets_server_time_firmware_and_websocket(client):
    response = post(client, **{"Client-Id": "uuid-1"})
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"server_time", "firmware", "websocket"}
    assert isinstance(answer["server_time"]["timestamp"], int) and answer["server_time"]["timestamp"] > 1e12
    assert answer["server_time"]["timezone_offset"] == 480
    assert answer["firmware"] == {"version": "1.6.2", "url": ""}
    assert answer["websocket"] == {"url": "ws://testserver/xiaozhi/v1/", "token": "", "version": 1}


def test_the_answer_never_contains_mqtt(client, settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    assert "mqtt" not in post(client).json()


def test_a_token_is_issued_only_when_auth_is_on(client, settings):
    assert post(client, **{"Client-Id": "uuid-1"}).json()["websocket"]["token"] == ""
    settings.XIAOZHI_AUTH_ENABLED = True
    token = post(client, **{"Client-Id": "uuid-1"}).json()["websocket"]["token"]
    assert verify_token(token, "uuid-1", MAC)


def test_the_token_names_the_device_id_as_client_when_client_id_is_missing(client, settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    assert verify_token(post(client).json()["websocket"]["token"], MAC, MAC)


def test_the_url_works_without_the_trailing_slash(client):
    assert post(client, path="/xiaozhi/ota").status_code == 200


ODD_TYPES = '{"application": {"version": 5}, "board": "x", "mac_address": 7}'


@pytest.mark.parametrize("body", ["{not json", "", "[1, 2]", "42", b"\xff\xfe", ODD_TYPES])
def test_a_malformed_body_still_gets_a_full_answer_when_the_headers_name_the_device(client, body):
    response = post(client, body=body, **{"User-Agent": "esp-box-3/1.5.0"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["firmware"] == {"version": "1.5.0", "url": ""}
    assert answer["websocket"]["url"] == "ws://testserver/xiaozhi/v1/"
    assert Device.objects.get(device_id=MAC).board == "esp-box-3"


def test_oversized_fields_are_clipped_instead_of_failing(client):
    body = {"application": {"version": "9" * 500}, "board": {"type": "b" * 500}}
    assert post(client, body=body, **{"Client-Id": "c" * 500}).status_code == 200
    assert len(Device.objects.get(device_id=MAC).board) == 100


def test_an_unknown_version_is_answered_as_0_0_0(client):
    assert post(client, body={}).json()["firmware"] == {"version": "0.0.0", "url": ""}


def test_a_missing_device_id_is_a_400_naming_the_header(client):
    response = post(client, body={"application": {"version": "1.0.0"}}, **{"Device-Id": None})
    assert response.status_code == 400
    assert "Device-Id" in response.json()["error"]


def test_a_malformed_device_id_is_a_400(client):
    response = post(client, **{"Device-Id": "zz"})
    assert response.status_code == 400
    assert "Device-Id" in response.json()["error"]


def test_the_body_mac_is_used_when_the_header_is_absent(client):
    assert post(client, **{"Device-Id": None}).status_code == 200
    body = {"board": {"type": "x", "mac": "11:22:33:44:55:66"}}
    assert post(client, body=body, **{"Device-Id": None}).status_code == 200
    assert set(Device.objects.values_list("device_id", flat=True)) == {MAC, "11:22:33:44:55:66"}


def test_an_upper_case_mac_is_normalised_to_one_device(client):
    post(client, **{"Device-Id": "AA:BB:CC:DD:EE:FF"})
    post(client, **{"Device-Id": "aa-bb-cc-dd-ee-ff"})
    assert list(Device.objects.values_list("device_id", flat=True)) == [MAC]


def test_the_poll_records_board_firmware_and_client(client):
    post(client, **{"Client-Id": "uuid-1"})
    device = Device.objects.get(device_id=MAC)
    assert (device.board, device.firmware_version, device.client_id) == ("bread-compact-wifi", "1.6.2", "uuid-1")
    assert device.last_seen is not None


def test_the_websocket_url_follows_the_request_host_and_scheme(client, settings):
    settings.ALLOWED_HOSTS = ["testserver", "voice.example"]
    assert post(client, HOST="voice.example:8000").json()["websocket"]["url"] == "ws://voice.example:8000/xiaozhi/v1/"
    secure = client.post("/xiaozhi/ota/", data=json.dumps(BODY), content_type="application/json",
                         headers={"Device-Id": MAC}, secure=True)
    assert secure.json()["websocket"]["url"] == "wss://testserver/xiaozhi/v1/"


def test_a_configured_websocket_url_and_binary_version_are_used(client, settings):
    settings.XIAOZHI_WEBSOCKET_URL = "wss://xiaozhi.example.com/xiaozhi/v1/"
    settings.XIAOZHI_BINARY_PROTOCOL_VERSION = 3
    websocket = post(client).json()["websocket"]
    assert (websocket["url"], websocket["version"]) == ("wss://xiaozhi.example.com/xiaozhi/v1/", 3)


def test_get_says_the_endpoint_is_running(client):
    response = client.get("/xiaozhi/ota/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"running" in response.content


def test_options_allows_any_origin(client):
    response = client.options("/xiaozhi/ota/")
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"

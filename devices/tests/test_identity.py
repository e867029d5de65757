import ipaddress
import logging

import pytest

from devices.auth import DeviceAuthMiddleware, identify
from devices.device_ids import normalize_device_id
from devices.tokens import issue_token

MAC = "aa:bb:cc:dd:ee:ff"


def scope(headers=None, query=b"", client=("10.0.0.9", 51000)):
    return {
        "type": "websocket",
        "path": "/xiaozhi/v1/",
        "query_string": query,
        "headers": [(name.encode(), value.encode()) for name, value in (headers or {}).items()],
        "client": client,
    }


@pytest.fixture(autouse=True)
def auth_off(settings):
    settings.XIAOZHI_AUTH_ENABLED = False
    settings.XIAOZHI_AUTH_SECRET = "test-secret"
    settings.XIAOZHI_ALLOWED_DEVICES = []


def test_it_reads_the_identity_from_the_headers_whatever_their_case():
    identity = identify(scope({"Device-Id": MAC, "CLIENT-ID": "c-1", "Protocol-Version": "2"}))
    assert (identity.device_id, identity.client_id, identity.protocol_version_header) == (MAC, "c-1", "2")
    assert identity.error_code is None
    assert identity.remote_addr == "10.0.0.9"


@pytest.mark.parametrize("value, expected", [
    ("AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
    ("aa-bb-cc-dd-ee-0f", "aa:bb:cc:dd:ee:0f"),
    (" 12:34:56:78:9a:bc ", "12:34:56:78:9a:bc"),
    ("aa:bb:cc:dd:ee", None),
    ("aa:bb:cc:dd:ee:ff:00", None),
    ("aabbccddeeff", None),
    ("aa:bb:cc:dd:ee:f", None),
    ("garbage", None),
    ("", None),
    (None, None),
    ("\u212a" + "a:bb:cc:dd:ee:ff", None),  # a Kelvin sign is not a "k"
    ("aa:bb:cc:dd:ee:ff\n", "aa:bb:cc:dd:ee:ff"),
])
def test_normalize_device_id(value, expected):
    assert normalize_device_id(value) == expected


def test_it_normalises_upper_case_and_dashed_device_ids():
    assert identify(scope({"device-id": "AA-BB-CC-DD-EE-FF"})).device_id == MAC


def test_a_missing_client_id_defaults_to_the_device_id():
    assert identify(scope({"device-id": MAC})).client_id == MAC


def test_it_falls_back_to_the_query_string_when_the_header_is_absent():
    query = b"device-id=AA%3ABB%3ACC%3ADD%3AEE%3AFF&client-id=web-1&authorization=Bearer%20xyz"
    identity = identify(scope(query=query))
    assert (identity.device_id, identity.client_id, identity.error_code) == (MAC, "web-1", None)


def test_the_query_string_is_ignored_when_the_device_id_header_is_present():
    identity = identify(scope({"device-id": MAC}, query=b"device-id=11:22:33:44:55:66&client-id=web"))
    assert (identity.device_id, identity.client_id) == (MAC, MAC)


def test_a_missing_device_id_is_refused_with_4400():
    identity = identify(scope({"client-id": "c-1"}))
    assert (identity.error_code, identity.error_reason) == (4400, "missing Device-Id")


def test_a_malformed_device_id_is_refused_with_4400():
    identity = identify(scope({"device-id": "not-a-mac"}))
    assert (identity.device_id, identity.error_code, identity.error_reason) == (None, 4400, "invalid Device-Id")


def test_proxy_headers_are_ignored_from_an_untrusted_peer_and_used_from_a_trusted_one(settings):
    forwarded = {"device-id": MAC, "x-forwarded-for": "5.6.7.8, 10.0.0.1"}
    settings.XIAOZHI_TRUSTED_PROXIES = ()
    assert identify(scope({"device-id": MAC, "x-real-ip": "1.2.3.4"})).remote_addr == "10.0.0.9"
    assert identify(scope(forwarded)).remote_addr == "10.0.0.9"
    settings.XIAOZHI_TRUSTED_PROXIES = (ipaddress.ip_network("10.0.0.0/24"),)
    assert identify(scope({"device-id": MAC, "x-real-ip": "1.2.3.4"})).remote_addr == "1.2.3.4"
    assert identify(scope(forwarded)).remote_addr == "5.6.7.8"  # 10.0.0.1 is a proxy of ours too
    assert identify(scope({"device-id": MAC}, client=None)).remote_addr == ""


def test_with_auth_off_any_token_or_none_is_accepted():
    assert identify(scope({"device-id": MAC, "authorization": "Bearer test-token"})).error_code is None
    assert identify(scope({"device-id": MAC})).error_code is None


def test_with_auth_on_a_valid_token_is_accepted(settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    token = issue_token("c-1", MAC)
    headers = {"device-id": MAC, "client-id": "c-1", "authorization": f"Bearer {token}"}
    assert identify(scope(headers)).error_code is None


def test_with_auth_on_a_query_string_token_is_accepted(settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    query = f"device-id={MAC}&client-id=web-1&authorization=Bearer+{issue_token('web-1', MAC)}".encode()
    assert identify(scope(query=query)).error_code is None


def test_with_auth_on_a_bad_token_is_refused_with_4401_and_logged_without_the_token(settings, caplog):
    settings.XIAOZHI_AUTH_ENABLED = True
    headers = {"device-id": MAC, "client-id": "c-1", "authorization": "Bearer test-token"}
    with caplog.at_level(logging.WARNING, logger="devices.auth"):
        identity = identify(scope(headers, client=("1.2.3.4", 5000)))
    assert (identity.error_code, identity.error_reason) == (4401, "invalid token")
    message = caplog.records[-1].getMessage()
    assert MAC in message and "c-1" in message and "1.2.3.4" in message
    assert "test-token" not in message


def test_with_auth_on_a_missing_token_is_refused_with_4401(settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    identity = identify(scope({"device-id": MAC}))
    assert (identity.error_code, identity.error_reason) == (4401, "missing token")


def test_an_allow_listed_device_skips_the_token_check(settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    settings.XIAOZHI_ALLOWED_DEVICES = ["AA-BB-CC-DD-EE-FF"]
    assert identify(scope({"device-id": MAC})).error_code is None
    assert identify(scope({"device-id": "11:22:33:44:55:66"})).error_code == 4401


async def test_the_middleware_hands_the_identity_to_the_inner_app_in_a_copied_scope():
    seen = {}

    async def inner(inner_scope, receive, send):
        seen.update(inner_scope)

    original = scope({"device-id": MAC})
    await DeviceAuthMiddleware(inner)(original, None, None)
    assert seen["device_identity"].device_id == MAC
    assert "device_identity" not in original


async def test_the_middleware_leaves_http_scopes_alone():
    seen = {}

    async def inner(inner_scope, receive, send):
        seen.update(inner_scope)

    await DeviceAuthMiddleware(inner)({"type": "http", "headers": []}, None, None)
    assert "device_identity" not in seen

import re

import pytest

from devices.tokens import issue_token, verify_token

CLIENT, DEVICE, NOW = "9f1c7e2a-client", "aa:bb:cc:dd:ee:ff", 1_700_000_000


@pytest.fixture(autouse=True)
def known_secret(settings):
    settings.XIAOZHI_AUTH_SECRET = "test-secret"
    settings.XIAOZHI_TOKEN_TTL_SECONDS = 3600


def test_a_token_is_an_unpadded_urlsafe_signature_dot_its_timestamp():
    token = issue_token(CLIENT, DEVICE, now=NOW + 0.7)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}\.1700000000", token)


def test_a_fresh_token_verifies_for_its_own_client_and_device():
    assert verify_token(issue_token(CLIENT, DEVICE, now=NOW), CLIENT, DEVICE, now=NOW + 10)


def test_a_bearer_prefix_is_accepted():
    assert verify_token("Bearer " + issue_token(CLIENT, DEVICE, now=NOW), CLIENT, DEVICE, now=NOW)


def test_a_token_for_another_device_or_client_is_rejected():
    token = issue_token(CLIENT, DEVICE, now=NOW)
    assert not verify_token(token, CLIENT, "11:22:33:44:55:66", now=NOW)
    assert not verify_token(token, "other-client", DEVICE, now=NOW)


def test_a_token_signed_with_another_secret_is_rejected(settings):
    token = issue_token(CLIENT, DEVICE, now=NOW)
    settings.XIAOZHI_AUTH_SECRET = "rotated"
    assert not verify_token(token, CLIENT, DEVICE, now=NOW)


def test_a_token_older_than_the_ttl_is_rejected():
    token = issue_token(CLIENT, DEVICE, now=NOW)
    assert verify_token(token, CLIENT, DEVICE, now=NOW + 3600)
    assert not verify_token(token, CLIENT, DEVICE, now=NOW + 3601)


def test_a_token_dated_more_than_five_minutes_ahead_is_rejected():
    assert verify_token(issue_token(CLIENT, DEVICE, now=NOW + 299), CLIENT, DEVICE, now=NOW)
    assert not verify_token(issue_token(CLIENT, DEVICE, now=NOW + 301), CLIENT, DEVICE, now=NOW)


def test_a_tampered_timestamp_is_rejected():
    signature, _ = issue_token(CLIENT, DEVICE, now=NOW).split(".")
    assert not verify_token(f"{signature}.{NOW + 1}", CLIENT, DEVICE, now=NOW)


@pytest.mark.parametrize(
    "garbage",
    ["", "Bearer ", "test-token", "Bearer test-token", ".", "abc.", ".123", "abc.-5", "abc.1e9", "abc.١٢٣",
     "é.1700000000", "abc." + "9" * 5000, None, 12345, b"bytes.1700000000"],
)
def test_garbage_is_rejected_without_raising(garbage):
    assert verify_token(garbage, CLIENT, DEVICE, now=NOW) is False

"""The "doors" probes of issue 10, each with its input and the outcome now expected: binding,
the auth secret, the admin login, the Host header, proxy headers, rate limits, device expiry and
the monitoring endpoints. The ones where the transport matters run on a real Daphne
(test_doors_daphne.py)."""
import ipaddress
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from devices import rate_limits
from devices.client_address import client_address
from devices.models import AgentConfig, Device, DeviceSession
from devices.tokens import issue_token, verify_token
from voice.conf import performance_config
from voice.protocol import CloseCode
from xiaozhi.asgi import application  # at import: it sets up logging, which must not undo caplog's handler

MAC = "aa:bb:cc:dd:ee:ff"
ATTACKER = "203.0.113.66"
BODY = json.dumps({"application": {"version": "1.6.2"}, "board": {"type": "bread-compact-wifi"}})

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def plain_server(settings):
    settings.XIAOZHI_AUTH_ENABLED = False
    settings.XIAOZHI_ACTIVATION_REQUIRED = False
    settings.XIAOZHI_WEBSOCKET_URL = ""
    settings.XIAOZHI_TRUSTED_PROXIES = ()
    settings.XIAOZHI_RATE_LIMIT_EXEMPT = ()


@pytest.fixture
def limits(monkeypatch):
    """Set performance.yaml keys for one test, e.g. limits(rate_limits__ota_per_address__requests=3)."""

    def set_limits(**values):
        for key, value in values.items():
            monkeypatch.setenv("XIAOZHI_PERF__" + key.upper(), str(value))
        performance_config.cache_clear()

    yield set_limits
    monkeypatch.undo()
    performance_config.cache_clear()


def ota(client, mac=MAC, client_id="uuid-real", addr="198.51.100.10", path="/xiaozhi/ota/", **headers):
    headers = {"Device-Id": mac, "Client-Id": client_id, **headers}
    return client.post(path, data=BODY, content_type="application/json", headers=headers, REMOTE_ADDR=addr)


# -- 1. binding --------------------------------------------------------------------------------------------
def test_an_ota_post_for_a_bound_device_from_another_client_gets_no_token(client, settings, caplog):
    settings.XIAOZHI_AUTH_ENABLED = True
    settings.XIAOZHI_AUTH_SECRET = "x" * 40
    real = ota(client).json()["websocket"]["token"]
    assert verify_token(real, "uuid-real", MAC)
    assert Device.objects.get().bound_client_id == "uuid-real"  # activation off: bound on first use

    stolen = ota(client, client_id="uuid-attacker", addr=ATTACKER)

    assert stolen.status_code == 403
    assert "websocket" not in stolen.json() and "bound to another client" in stolen.json()["error"]
    assert any("uuid-attacker" in r.getMessage() and ATTACKER in r.getMessage() for r in caplog.records)
    assert Device.objects.get().client_id == "uuid-real"  # nothing recorded for the attacker
    assert verify_token(ota(client).json()["websocket"]["token"], "uuid-real", MAC)  # the owner still gets one


def test_with_activation_on_the_binding_goes_to_the_client_whose_code_was_bound(client, admin_client, settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    settings.XIAOZHI_AUTH_ENABLED = True
    settings.XIAOZHI_AUTH_SECRET = "x" * 40
    code = ota(client).json()["activation"]["code"]
    # Someone else polls for the same MAC before the owner types the code: they get a code of their
    # own, and the owner's stops working, so the administrator cannot bind the intruder by mistake.
    intruder_code = ota(client, client_id="uuid-attacker", addr=ATTACKER).json()["activation"]["code"]
    assert intruder_code != code
    code = ota(client).json()["activation"]["code"]
    admin_client.post("/admin/devices/device/bind/", {"code": code, "agent": ""})
    device = Device.objects.get()
    assert (device.activated, device.bound_client_id) == (True, "uuid-real")

    assert ota(client, client_id="uuid-attacker", addr=ATTACKER).status_code == 403
    assert "activation" not in ota(client).json()


def test_the_admin_resets_a_binding_and_the_next_client_binds(client, admin_client, settings):
    ota(client)
    device = Device.objects.get()
    assert ota(client, client_id="uuid-new-board").status_code == 403
    response = admin_client.post("/admin/devices/device/", {"action": "reset_binding", "_selected_action": [device.pk]})
    assert response.status_code == 302
    assert Device.objects.get().bound_client_id == ""
    assert ota(client, client_id="uuid-new-board").status_code == 200
    assert Device.objects.get().bound_client_id == "uuid-new-board"


def test_with_activation_on_a_reset_binding_needs_a_new_activation(client, admin_client, settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    device = Device.objects.create(device_id=MAC, activated=True, client_id="uuid-real", bound_client_id="uuid-real")
    admin_client.post("/admin/devices/device/", {"action": "reset_binding", "_selected_action": [device.pk]})
    assert "activation" in ota(client, client_id="uuid-other").json()


@pytest.mark.parametrize("activation", [False, True])
@pytest.mark.django_db(transaction=True)
async def test_a_socket_takeover_by_another_client_is_refused_and_logged(settings, caplog, activation):
    """Over the in-process communicator; the real-socket version (the owner stays connected) is in
    test_doors_daphne.py. With activation on the owner was bound by its code; off, by its first socket."""
    from channels.db import database_sync_to_async

    settings.XIAOZHI_ACTIVATION_REQUIRED = activation
    if activation:
        await Device.objects.acreate(device_id=MAC, activated=True, client_id="uuid-real", bound_client_id="uuid-real")
    owner = await handshake(application, MAC, "uuid-real")
    await owner.send_to(text_data=HELLO)
    assert json.loads(await owner.receive_from(timeout=10))["type"] == "hello"
    intruder = await handshake(application, MAC, "uuid-attacker", addr=ATTACKER)
    closed = await intruder.receive_output(timeout=10)
    assert (closed["type"], closed["code"]) == ("websocket.close", CloseCode.FORBIDDEN)
    assert any("takeover" in r.getMessage() and "uuid-attacker" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    sessions = await database_sync_to_async(lambda: list(DeviceSession.objects.values_list("remote_addr", "ended_at")))()
    assert sessions == [("198.51.100.10", None)]  # only the owner's, still open
    await owner.disconnect()
    await intruder.disconnect()


HELLO = json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                    "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}})


async def handshake(application, mac, client_id, addr="198.51.100.10", headers=None):
    from channels.testing import WebsocketCommunicator

    raw = {"device-id": mac, "client-id": client_id, "protocol-version": "1", **(headers or {})}
    communicator = WebsocketCommunicator(application, "/xiaozhi/v1/",
                                         headers=[(k.encode(), v.encode()) for k, v in raw.items()])
    communicator.scope["client"] = (addr, 40000)  # the communicator has no peer address of its own
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


# -- 2. the auth secret ------------------------------------------------------------------------------------
def run_manage(*args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "XIAOZHI_AUTH_SECRET")}
    environ.update(env)
    return subprocess.run([sys.executable, *args], cwd=django_settings.BASE_DIR, env=environ, capture_output=True,
                          text=True, timeout=120)


def test_a_token_forged_with_the_default_key_is_stopped_by_the_start_up_check(settings):
    from voice.checks import check_device_security

    settings.XIAOZHI_AUTH_SECRET = settings.DEFAULT_SECRET_KEY  # what an unset SECRET_KEY means
    forged = issue_token("uuid-attacker", MAC)  # anyone can: the key is in the repository
    settings.XIAOZHI_AUTH_ENABLED = True
    assert [e.id for e in check_device_security()] == ["voice.E020"]
    assert check_device_security()[0].hint

    done = run_manage("manage.py", "check", XIAOZHI_AUTH_ENABLED="true")
    assert done.returncode != 0 and "voice.E020" in done.stderr
    served = run_manage("-c", "import xiaozhi.asgi", XIAOZHI_AUTH_ENABLED="true", XIAOZHI_PRELOAD_MODELS="false",
                        DJANGO_SETTINGS_MODULE="xiaozhi.settings")
    assert served.returncode != 0 and "voice.E020" in served.stderr  # Daphne would not start

    settings.XIAOZHI_AUTH_SECRET = "a-real-secret-" + "k" * 40  # with a secret of its own, the forgery fails
    assert not check_device_security()
    assert not verify_token(forged, "uuid-attacker", MAC)


def compose_environment(given: dict) -> dict:
    """docker-compose.yml's app environment, its ${VAR:-default} / ${VAR:?error} filled from ``given``."""
    import re

    import yaml

    compose = yaml.safe_load((django_settings.BASE_DIR / "docker-compose.yml").read_text())

    def fill(match):
        name, op, default = match.group(1), match.group(2), match.group(3)
        if name in given:
            return given[name]
        assert op != ":?", f"docker-compose.yml requires {name}"
        return default

    return {key: re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", fill, str(value))
            for key, value in compose["x-app"]["environment"].items()}


def test_check_deploy_passes_with_the_compose_settings():
    env = compose_environment({"SECRET_KEY": "3fT9qLx2Vb8wZ0pRk7sN4mYc1hJ6dGe5aUoIiQ-compose-" * 2,
                               "PUBLIC_HOST": "voice.example.com",
                               "XIAOZHI_WEBSOCKET_URL": "wss://voice.example.com/xiaozhi/v1/"})
    assert env["XIAOZHI_AUTH_ENABLED"] == "true" and "*" not in env["ALLOWED_HOSTS"]
    done = run_manage("manage.py", "check", "--deploy", "--fail-level", "WARNING", XIAOZHI_PRELOAD_MODELS="false",
                      **env)
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


# -- 3. the admin login ------------------------------------------------------------------------------------
def test_sixty_wrong_passwords_from_one_address_are_throttled(client, settings, monkeypatch):
    # The limit counts in fixed windows of the wall clock (300 s), and ten password checks take seconds
    # on a slow machine: a run that crossed a window's end started counting again (seen once). The
    # clock the limiter reads is held in the middle of one window.
    import time as real_time

    from devices import rate_limits

    window = performance_config().rate_limits["admin_login_failures_per_address"].seconds
    held = (real_time.time() // window) * window + window / 2
    monkeypatch.setattr(rate_limits, "time", type("HeldClock", (), {"time": staticmethod(lambda: held)}))
    User.objects.create_superuser("admin", "a@example.com", "the-right-password")
    answers = [client.post("/admin/login/", {"username": "admin", "password": f"guess-{i}"},
                           REMOTE_ADDR=ATTACKER).status_code for i in range(60)]
    allowed = performance_config().rate_limits["admin_login_failures_per_address"].requests
    assert answers == [200] * allowed + [429] * (60 - allowed)
    blocked = client.post("/admin/login/", {"username": "admin", "password": "the-right-password"}, REMOTE_ADDR=ATTACKER)
    assert blocked.status_code == 429 and 0 < int(blocked["Retry-After"]) <= 300  # not even tried
    elsewhere = client.post("/admin/login/", {"username": "admin", "password": "the-right-password"},
                            REMOTE_ADDR="198.51.100.20")
    assert elsewhere.status_code == 302  # the owner, from their own address, still gets in


# -- 4. the Host header --------------------------------------------------------------------------------------
def test_a_forged_host_is_refused_and_the_url_comes_from_the_configuration(client, settings):
    settings.ALLOWED_HOSTS = ["voice.example.com", "testserver"]
    assert ota(client, HOST="evil.example").status_code == 400
    settings.XIAOZHI_WEBSOCKET_URL = "wss://voice.example.com/xiaozhi/v1/"
    settings.ALLOWED_HOSTS = ["*"]
    assert ota(client, HOST="evil.example").json()["websocket"]["url"] == "wss://voice.example.com/xiaozhi/v1/"


def test_any_host_without_a_configured_url_is_a_start_up_error(settings):
    from voice.checks import check_device_security

    settings.ALLOWED_HOSTS = ["*"]
    assert [e.id for e in check_device_security()] == ["voice.E021"]
    settings.XIAOZHI_WEBSOCKET_URL = "http://oops"
    assert [e.id for e in check_device_security()] == ["voice.E022"]


def test_the_default_allowed_hosts_name_this_machine_only():
    code = "import django; django.setup(); from django.conf import settings as s; print(' '.join(s.ALLOWED_HOSTS))"
    environ = {k: v for k, v in os.environ.items() if k != "ALLOWED_HOSTS"}
    hosts = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, capture_output=True, text=True,
                           env={**environ, "DJANGO_SETTINGS_MODULE": "xiaozhi.settings"}, check=True).stdout.split()
    assert "*" not in hosts and {"localhost", "127.0.0.1"} <= set(hosts)


# -- 5. proxy headers ------------------------------------------------------------------------------------------
def test_spoofed_forwarded_for_is_ignored_from_an_untrusted_peer_and_used_from_a_trusted_proxy(client, settings, limits):
    limits(rate_limits__ota_per_address__requests=3)
    spoofs = [ota(client, mac=f"aa:00:00:00:00:0{i}", addr=ATTACKER, **{"X-Forwarded-For": f"192.0.2.{i}",
                  "X-Real-IP": f"192.0.2.{i}"}).status_code for i in range(5)]
    assert spoofs == [200, 200, 200, 429, 429]  # counted against the real peer, whatever the headers say

    settings.XIAOZHI_TRUSTED_PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)
    behind = [ota(client, mac=f"bb:00:00:00:00:0{i}", addr="10.1.2.3",
                  **{"X-Forwarded-For": f"192.0.2.{i % 2}, 10.9.9.9"}).status_code for i in range(8)]
    assert behind.count(429) == 2  # two clients behind our proxies, three each, then refused


def test_one_function_gives_the_address_for_requests_and_scopes(settings, rf):
    settings.XIAOZHI_TRUSTED_PROXIES = (ipaddress.ip_network("10.0.0.1/32"),)
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 192.0.2.9")
    scope = {"type": "websocket", "client": ("10.0.0.1", 1), "headers": [(b"x-forwarded-for", b"6.6.6.6, 192.0.2.9")]}
    assert client_address(request) == client_address(scope) == "192.0.2.9"  # the left entry may be forged
    assert client_address(dict(scope, client=("192.0.2.50", 1))) == "192.0.2.50"
    assert client_address(dict(scope, headers=[(b"x-forwarded-for", b"not-an-ip")])) == "10.0.0.1"


# -- 6. rate limits ------------------------------------------------------------------------------------------
def test_an_ota_flood_from_one_address_gets_429_with_retry_after(client, limits):
    limits(rate_limits__ota_per_address__requests=5, rate_limits__ota_per_address__seconds=60)
    answers = [ota(client, mac=f"cc:00:00:00:00:{i:02x}", addr=ATTACKER) for i in range(8)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
    refused = answers[-1]
    assert 0 < int(refused["Retry-After"]) <= 60 and refused.json()["limit"] == "ota_per_address"
    assert refused["Access-Control-Allow-Origin"] == "*"
    assert Device.objects.count() == 5  # no rows for the refused
    assert ota(client, mac="cc:00:00:00:00:ff", addr="198.51.100.99").status_code == 200  # others unaffected


def test_one_device_polled_from_many_addresses_is_limited_per_device(client, limits):
    limits(rate_limits__ota_per_device__requests=4)
    answers = [ota(client, addr=f"198.51.100.{i}").status_code for i in range(6)]
    assert answers == [200] * 4 + [429] * 2


def test_the_activation_poll_is_limited(client, settings, limits):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    limits(rate_limits__activate_per_device__requests=3)
    ota(client)
    polls = [ota(client, path="/xiaozhi/ota/activate").status_code for _ in range(5)]
    assert polls == [202, 202, 202, 429, 429]


def test_activation_code_guessing_is_limited(admin_client, settings, limits):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    limits(rate_limits__activation_code_failures_per_address__requests=5)
    device = Device.objects.create(device_id=MAC, client_id="uuid-real", activation_code="424242",
                                   activation_code_expires_at=timezone.now() + timedelta(hours=1))
    guesses = [admin_client.post("/admin/devices/device/bind/", {"code": f"{i:06d}"}, REMOTE_ADDR=ATTACKER).status_code
               for i in range(8)]
    assert guesses == [200] * 5 + [429] * 3  # 200 = the form again, "no device is waiting"
    right = admin_client.post("/admin/devices/device/bind/", {"code": "424242"}, REMOTE_ADDR=ATTACKER)
    assert right.status_code == 429 and not Device.objects.get(pk=device.pk).activated

    limits(rate_limits__activation_code_failures_total__requests=7)  # 5 counted already, from anywhere
    spread = [admin_client.post("/admin/devices/device/bind/", {"code": f"{i:06d}"},
                                REMOTE_ADDR=f"192.0.2.{i}").status_code for i in range(4)]
    assert spread == [200, 200, 429, 429]


@pytest.mark.django_db(transaction=True)
async def test_the_socket_cap_per_address_and_the_exempt_list(settings, limits):
    """In process (the real-socket version is in test_doors_daphne.py): past the cap, 4429."""
    limits(server__max_connections_per_address=2)
    first = await handshake(application, "dd:00:00:00:00:01", "c1", addr=ATTACKER)
    second = await handshake(application, "dd:00:00:00:00:02", "c2", addr=ATTACKER)
    third = await handshake(application, "dd:00:00:00:00:03", "c3", addr=ATTACKER)
    closed = await third.receive_output(timeout=10)
    assert (closed["type"], closed["code"]) == ("websocket.close", CloseCode.RATE_LIMITED)
    other = await handshake(application, "dd:00:00:00:00:04", "c4", addr="198.51.100.7")
    await other.send_to(text_data=HELLO)
    assert json.loads(await other.receive_from(timeout=10))["type"] == "hello"

    settings.XIAOZHI_RATE_LIMIT_EXEMPT = (ipaddress.ip_network(ATTACKER),)
    exempt = await handshake(application, "dd:00:00:00:00:05", "c5", addr=ATTACKER)
    await exempt.send_to(text_data=HELLO)
    assert json.loads(await exempt.receive_from(timeout=10))["type"] == "hello"
    for communicator in (first, second, third, other, exempt):
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_too_many_handshakes_are_closed_with_4429(limits):
    limits(rate_limits__handshake_per_address__requests=3)
    codes = []
    for i in range(5):
        communicator = await handshake(application, f"ee:00:00:00:00:0{i}", f"c{i}", addr=ATTACKER)
        await communicator.send_to(text_data=HELLO)
        first = await communicator.receive_output(timeout=10)
        codes.append(first.get("code") if first["type"] == "websocket.close" else "hello")
        await communicator.disconnect()
    assert codes == ["hello"] * 3 + [CloseCode.RATE_LIMITED] * 2


def test_the_limiter_is_shared_through_redis_between_processes(settings, limits):
    if not settings.REDIS_URL:
        pytest.skip("without REDIS_URL each process counts its own (the local-memory cache)")
    limits(rate_limits__ota_per_address__requests=4)
    code = ("import django; django.setup(); from devices import rate_limits; "
            "print([rate_limits.hit('ota_per_address', '192.0.2.77').allowed for _ in range(3)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, capture_output=True, text=True,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "xiaozhi.settings",
                              "XIAOZHI_PERF__RATE_LIMITS__OTA_PER_ADDRESS__REQUESTS": "4"}, check=True).stdout
    assert out.strip() == "[True, True, True]"
    assert rate_limits.hit("ota_per_address", "192.0.2.77").allowed  # the 4th, counted by the other process too
    assert not rate_limits.hit("ota_per_address", "192.0.2.77").allowed


def test_a_failing_cache_lets_devices_through(monkeypatch):
    from django.core.cache import cache

    def broken(*args, **kwargs):
        raise ConnectionError("redis down")

    monkeypatch.setattr(cache, "add", broken)
    assert rate_limits.hit("ota_per_address", ATTACKER).allowed


# -- unbound device expiry -------------------------------------------------------------------------------------
def test_devices_that_never_activated_or_connected_expire(settings):
    settings.XIAOZHI_DEVICE_EXPIRY_SECONDS = 3600
    old = timezone.now() - timedelta(hours=2)
    agent = AgentConfig.objects.create(name="Tutor")
    never_activated = Device.objects.create(device_id="aa:00:00:00:00:01", activated=False, last_seen=old)
    never_connected = Device.objects.create(device_id="aa:00:00:00:00:02", activated=True, last_seen=old)
    used = Device.objects.create(device_id="aa:00:00:00:00:03", activated=True, last_seen=old)
    DeviceSession.objects.create(device=used, session_id="5b4f9a3e-1111-4c8a-9d57-0123456789ab")
    recent = Device.objects.create(device_id="aa:00:00:00:00:04", activated=False, last_seen=timezone.now())
    configured = Device.objects.create(device_id="aa:00:00:00:00:05", activated=False, last_seen=old, agent=agent)

    call_command("expire_devices", stdout=open(os.devnull, "w"))

    assert set(Device.objects.values_list("pk", flat=True)) == {used.pk, recent.pk, configured.pk}
    assert not Device.objects.filter(pk__in=[never_activated.pk, never_connected.pk]).exists()
    assert django_settings.CELERY_BEAT_SCHEDULE["devices-expire"]["task"] == "devices.tasks.expire_devices"
    from devices.tasks import expire_devices

    assert expire_devices() == 0


# -- 7. monitoring -------------------------------------------------------------------------------------------
MONITORING = ["/metrics", "/api/performance/", "/api/performance/websocket/",
              "/api/performance/operations/first_audio_sent_ms/", "/api/performance/concurrency/"]


def served(response) -> bool:
    """The view's own answer: the figures (an operation with no samples yet is the view's 404)."""
    if response.status_code == 404:
        return "known" in response.json()
    return response.status_code == 200 and (b"xiaozhi_" in response.content or response.json())


@pytest.mark.parametrize("url", MONITORING)
def test_metrics_and_the_performance_api_need_a_token_or_staff(client, settings, url):
    settings.XIAOZHI_MONITORING_API_TOKEN = "scrape-token-123"
    settings.XIAOZHI_MONITORING_PUBLIC = False
    refused = client.get(url)
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert b"pid" not in refused.content and b"host" not in refused.content
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert served(client.get(url, HTTP_AUTHORIZATION="Bearer scrape-token-123"))
    user = User.objects.create_user("viewer", password="pw-123456")
    client.force_login(user)
    assert client.get(url).status_code == 401  # a session, but not staff
    user.is_staff = True
    user.save()
    assert served(client.get(url))
    client.logout()
    settings.XIAOZHI_MONITORING_PUBLIC = True  # a trusted network
    assert served(client.get(url))
    assert client.get("/health").status_code in (200, 503)  # always public


def test_the_limits_are_typed_and_overridable_like_the_rest_of_performance_yaml():
    from voice.conf import PerformanceConfigError, load

    path = django_settings.BASE_DIR / "performance.yaml"
    config = load(path, None, {"XIAOZHI_PERF__RATE_LIMITS__OTA_PER_ADDRESS__REQUESTS": "7",
                               "XIAOZHI_PERF__SERVER__MAX_CONNECTIONS_PER_ADDRESS": "5"})
    assert (config.rate_limits["ota_per_address"].requests, config.server.max_connections_per_address) == (7, 5)
    assert config.sources["rate_limits.ota_per_address.requests"].startswith("env ")
    with pytest.raises(PerformanceConfigError, match="rate_limits.handshake_per_device.seconds must be at least 1"):
        load(path, None, {"XIAOZHI_PERF__RATE_LIMITS__HANDSHAKE_PER_DEVICE__SECONDS": "0"})
    assert not load(path, None, {"XIAOZHI_PERF__RATE_LIMITS__OTA_PER_DEVICE__REQUESTS": "0"}
                    ).rate_limits["ota_per_device"].enabled  # 0 = no limit

"""The camera tool's upload (POST /xiaozhi/vision/) through the ASGI application (Django's async
client: the transport does not matter here; test_vision_server.py goes through a real server), with
a local OpenAI-compatible vision server at the remote boundary (loadtest/fake_vision.py)."""
import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.test import AsyncClient

from devices import records, vision
from devices.models import AgentConfig, Device, DeviceSession, Turn, VisionQuery
from devices.tokens import issue_token
from devices.vision_views import BUSY, FAILED, OFF
from loadtest.camera import multipart, photo_jpeg
from loadtest.fake_vision import FakeVisionServer, answer_for
from voice.conf import ServiceLimits
from voice.pipeline.turn_row import TurnRow
from voice.providers import registry
from voice.workers import LocalService
from voice.workers import base as workers_base

MAC = "aa:bb:cc:00:00:01"
CLIENT = "client-uuid-1"
PATH = "/xiaozhi/vision/"
QUESTION = "What do you see?"
JPEG = photo_jpeg()
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
# Only the in-process backend: under Celery the vision provider would be built in the worker from
# its own settings, which cannot name this test's local vision server.
needs_local_backend = pytest.mark.skipif(django_settings.XIAOZHI_WORKER_BACKEND != "local",
                                         reason="the worker cannot see this test's vision server")


@pytest.fixture
def fake_vision(settings):
    with FakeVisionServer() as server:
        settings.XIAOZHI_VLLM_PROVIDER = "openai"
        settings.XIAOZHI_VLLM_BASE_URL = server.url
        settings.XIAOZHI_VLLM_MODEL = "fake-vision-1"
        registry.forget("vllm", "openai")  # built from these settings on first use
        yield server
        registry.forget("vllm", "openai")


@pytest.fixture
def device(transactional_db, settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = False
    settings.XIAOZHI_VISION_KEEP_IMAGES = False
    device = Device.objects.create(device_id=MAC, client_id=CLIENT, activated=True)
    session = DeviceSession.objects.create(device=device, session_id="00000000-0000-0000-0000-000000000001")
    return device, session


def headers(token=None, device_id=MAC, client_id=CLIENT, **extra):
    out = {"Device-Id": device_id, "Client-Id": client_id, **extra}
    token = vision.issue_vision_token(client_id, device_id) if token is None else token
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


async def upload(question=QUESTION, image=JPEG, **header_args):
    boundary = "test-boundary-1"
    body = multipart(question, image, boundary) if image is not None else (
        f'--{boundary}\r\nContent-Disposition: form-data; name="question"\r\n\r\n{question}\r\n--{boundary}--\r\n'.encode())
    return await AsyncClient().post(PATH, data=body, content_type=f"multipart/form-data; boundary={boundary}",
                                    headers=headers(**header_args))


def rows():
    return list(VisionQuery.objects.order_by("asked_at"))


# --- what MCP initialize offers ---------------------------------------------------------------------

def test_no_vision_provider_means_no_capability(device, settings):
    settings.XIAOZHI_VLLM_PROVIDER = ""
    assert vision.vision_capability(MAC, CLIENT, host="example.org:8000") is None


def test_the_capability_carries_a_token_for_this_device_and_client_only(device, settings):
    settings.XIAOZHI_VLLM_PROVIDER = "openai"
    settings.XIAOZHI_VISION_URL = ""
    settings.XIAOZHI_WEBSOCKET_URL = "wss://voice.example.org/xiaozhi/v1/"
    capability = vision.vision_capability(MAC, CLIENT)
    assert capability["url"] == "https://voice.example.org/xiaozhi/vision/"
    assert vision.verify_vision_token(capability["token"], CLIENT, MAC)
    assert not vision.verify_vision_token(capability["token"], CLIENT, "aa:bb:cc:00:00:02")
    assert not vision.verify_vision_token(capability["token"], "another-client", MAC)
    settings.XIAOZHI_WEBSOCKET_URL = ""
    assert vision.vision_capability(MAC, CLIENT, host="10.0.0.5:8000")["url"] == "http://10.0.0.5:8000/xiaozhi/vision/"
    assert vision.vision_capability(MAC, CLIENT) is None  # no URL known at all: nothing is advertised
    settings.XIAOZHI_VISION_URL = "https://cdn.example.org/photo"
    assert vision.vision_capability(MAC, CLIENT)["url"] == "https://cdn.example.org/photo"


def test_an_agent_chooses_its_vision_provider_or_none(device, settings):
    settings.XIAOZHI_VLLM_PROVIDER = ""
    settings.XIAOZHI_VISION_URL = "http://server/xiaozhi/vision/"
    dev, _ = device
    dev.agent = AgentConfig.objects.create(name="eyes", vllm_provider="openai", vllm_model="llava")
    dev.save()
    assert vision.vision_capability(MAC, CLIENT) is not None
    assert records.agent_config_for(dev)["vllm_model"] == "llava"
    settings.XIAOZHI_VLLM_PROVIDER = "openai"
    dev.agent.vllm_provider = registry.NONE
    dev.agent.save()
    assert vision.vision_capability(MAC, CLIENT) is None
    agent = records.agent_config_for(Device.objects.get(pk=dev.pk))
    assert vision.vision_capability(MAC, CLIENT, agent=agent) is None


# --- refusals ---------------------------------------------------------------------------------------

async def test_no_token_is_401(device, fake_vision):
    response = await upload(token="")
    assert response.status_code == 401 and "Authorization" in response.content.decode()


async def test_a_wrong_token_is_401(device, fake_vision):
    other = vision.issue_vision_token(CLIENT, "aa:bb:cc:00:00:02")
    for token in ("nonsense", other, issue_token(CLIENT, MAC)):  # another device's; the WebSocket token
        response = await upload(token=token)
        assert response.status_code == 401, token
        assert "Invalid or expired vision token" in response.content.decode()
    assert fake_vision.seen == [] and await sync_to_async(rows)() == []


async def test_an_expired_token_is_401(device, fake_vision, settings):
    stale = vision.issue_vision_token(CLIENT, MAC, now=1_000_000)
    assert (await upload(token=stale)).status_code == 401


async def test_a_missing_or_malformed_device_id_is_400(device, fake_vision):
    token = vision.issue_vision_token(CLIENT, MAC)
    response = await AsyncClient().post(PATH, data=b"", content_type="multipart/form-data; boundary=x",
                                        headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400 and "Device-Id" in response.content.decode()
    assert (await upload(token=token, device_id="not-a-mac")).status_code == 400


async def test_a_device_not_bound_while_activation_is_required_is_403(device, fake_vision, settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    await sync_to_async(Device.objects.filter(device_id=MAC).update)(activated=False)
    response = await upload()
    assert response.status_code == 403 and "not bound" in response.content.decode()
    settings.XIAOZHI_ACTIVATION_REQUIRED = False
    assert (await upload()).status_code == 200  # not required: the same device is served


async def test_an_unknown_device_is_403(device, fake_vision):
    response = await upload(device_id="aa:bb:cc:00:00:99")
    assert response.status_code == 403 and "OTA" in response.content.decode()


async def test_a_missing_question_or_file_is_400(device, fake_vision):
    response = await upload(question="  ")
    assert response.status_code == 400 and "question" in response.content.decode()
    response = await upload(image=None)
    assert response.status_code == 400 and "file" in response.content.decode()
    response = await AsyncClient().post(PATH, data=JPEG, content_type="image/jpeg", headers=headers())
    assert response.status_code == 400 and "multipart" in response.content.decode()
    assert fake_vision.seen == []


async def test_a_file_that_is_not_a_jpeg_or_png_is_415(device, fake_vision):
    for data in (b"GIF89a" + b"\x00" * 100, b"hello, this is text", b""):
        response = await upload(image=data)
        assert response.status_code == 415, data[:8]
        assert "not a JPEG or PNG" in response.content.decode()
    assert fake_vision.seen == []


async def test_a_photo_over_the_size_limit_is_413(device, fake_vision, settings):
    settings.XIAOZHI_VISION_MAX_IMAGE_BYTES = 2048
    assert len(JPEG) > 2048
    response = await upload()
    assert response.status_code == 413 and "at most 2048 bytes" in response.content.decode()
    settings.XIAOZHI_VISION_MAX_IMAGE_BYTES = 1024 * 1024
    response = await upload(image=JPEG + bytes(1024 * 1024))  # the body alone is over the limit and framing
    assert response.status_code == 413
    assert fake_vision.seen == []  # (a declared Content-Length over the limit: test_vision_server.py)


@needs_local_backend
async def test_uploads_over_the_rate_limits_are_429(device, fake_vision, monkeypatch):
    from dataclasses import replace

    from voice.conf import RateLimit, performance_config

    config = performance_config()
    limits = {**config.rate_limits, "vision_per_device": RateLimit(1, 60), "vision_per_address": RateLimit(3, 60)}
    monkeypatch.setattr("devices.rate_limits.performance_config", lambda: replace(config, rate_limits=limits))
    assert (await upload()).status_code == 200  # the address's 1st, the device's 1st
    response = await upload()  # the device's 2nd
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1 and "retry in" in response.content.decode()
    assert (await upload(token="")).status_code == 401  # the address's 3rd
    response = await upload(token="")  # the address's 4th: refused before its token is even looked at
    assert response.status_code == 429
    assert len(fake_vision.seen) == 1


async def test_get_is_405(device):
    assert (await AsyncClient().get(PATH, headers=headers())).status_code == 405


# --- answers ----------------------------------------------------------------------------------------

@needs_local_backend
async def test_a_photo_question_is_answered_by_the_vision_provider_and_recorded(device, fake_vision):
    response = await upload()
    assert response.status_code == 200 and response["X-Vision-Status"] == "ok"
    assert response["Content-Type"].startswith("text/plain")
    [seen] = fake_vision.seen
    assert (seen.question, seen.image_type, seen.image_bytes, seen.model) == (QUESTION, "image/jpeg", len(JPEG), "fake-vision-1")
    assert seen.system == django_settings.XIAOZHI_VLLM_PROMPT
    assert response.content.decode().strip() == answer_for(seen)
    [row] = await sync_to_async(rows)()
    _, session = device
    assert (row.question, row.answer, row.error, row.image_bytes, row.image_type) == (
        QUESTION, answer_for(seen), "", len(JPEG), "image/jpeg")
    assert row.session_id == session.pk and row.turn_id is None and row.image is None
    assert row.seconds is not None and row.seconds >= 0 and (row.provider, row.model) == ("openai", "fake-vision-1")


@needs_local_backend
async def test_a_png_is_accepted_and_kept_when_the_setting_says_so(device, fake_vision, settings):
    settings.XIAOZHI_VISION_KEEP_IMAGES = True
    response = await upload(image=PNG)
    assert response.status_code == 200
    assert fake_vision.seen[0].image_type == "image/png"
    [row] = await sync_to_async(rows)()
    assert bytes(row.image) == PNG and row.image_type == "image/png"


@needs_local_backend
async def test_the_photo_is_linked_to_the_turn_recorded_after_it(device, fake_vision):
    dev, session = device
    assert (await upload()).status_code == 200
    turn_pk = await sync_to_async(records.record_turn)(dev.pk, session.pk, TurnRow(user_text="What do you see?",
                                                                                   reply_text="A red square."))
    [row] = await sync_to_async(rows)()
    assert row.turn_id == turn_pk
    later = await sync_to_async(records.record_turn)(dev.pk, session.pk, TurnRow(user_text="thanks"))
    assert (await sync_to_async(VisionQuery.objects.get)(pk=row.pk)).turn_id == turn_pk != later
    assert await sync_to_async(Turn.objects.filter(vision_queries__isnull=False).count)() == 1


@needs_local_backend
async def test_a_vision_server_that_fails_once_is_retried_as_the_llm_is(device, fake_vision, settings):
    settings.XIAOZHI_LLM_RETRIES, settings.XIAOZHI_LLM_RETRY_BACKOFF_SECONDS = 2, 0.01
    registry.forget("vllm", "openai")
    fake_vision.fail_next = [503]
    response = await upload()
    assert response["X-Vision-Status"] == "ok" and len(fake_vision.seen) == 2
    assert response.content.decode().strip() == answer_for(fake_vision.seen[1])


@needs_local_backend
async def test_a_failing_vision_provider_is_an_apology_never_a_500(device, fake_vision, settings):
    settings.XIAOZHI_LLM_RETRIES = 0
    registry.forget("vllm", "openai")
    fake_vision.fail_next = [400]  # not retried: the request is what the server refuses
    response = await upload()
    assert response.status_code == 200 and response["X-Vision-Status"] == "error"
    assert response.content.decode().strip() == FAILED
    [row] = await sync_to_async(rows)()
    assert row.answer == FAILED and "HTTP 400" in row.error


async def test_a_device_whose_agent_has_no_vision_is_told_so(device, settings):
    settings.XIAOZHI_VLLM_PROVIDER = ""
    response = await upload()
    assert response.status_code == 200 and response["X-Vision-Status"] == "off"
    assert response.content.decode().strip() == OFF


@needs_local_backend
async def test_a_full_vision_queue_answers_busy_at_once(device, fake_vision, monkeypatch):
    """One slot, no queue: while one photo is being looked at, the next is told "busy" (200, plain
    text the LLM can speak) without waiting, and recorded as such."""
    service = LocalService(ServiceLimits("vllm", max_concurrent=1, queue_size=0, timeout=30.0, pool_size=1))
    monkeypatch.setattr(workers_base, "_built", {**workers_base.services(), "vllm": service})
    await sync_to_async(Device.objects.create)(device_id="aa:bb:cc:00:00:02", client_id=CLIENT, activated=True)
    fake_vision.hold()
    first = asyncio.ensure_future(upload())
    while not fake_vision.seen:
        await asyncio.sleep(0.01)
    # The held call holds neither the event loop nor the thread the synchronous views share: the OTA answers.
    ota = await AsyncClient().post("/xiaozhi/ota/", data="{}", content_type="application/json",
                                   headers={"Device-Id": "aa:bb:cc:00:00:03"})
    assert ota.status_code == 200 and not first.done()
    busy = await upload(device_id="aa:bb:cc:00:00:02")
    assert busy.status_code == 200 and busy["X-Vision-Status"] == "busy" and busy.content.decode().strip() == BUSY, [r.error for r in await sync_to_async(rows)()]
    fake_vision.release()
    assert (await first)["X-Vision-Status"] == "ok"
    assert service.occupancy()["rejected"] == 1 and service.occupancy()["completed"] == 1
    states = [(r.device.device_id, r.error.split(":")[0]) for r in await sync_to_async(
        lambda: list(VisionQuery.objects.select_related("device").order_by("asked_at")))()]
    assert states == [(MAC, ""), ("aa:bb:cc:00:00:02", "busy")]
    service.shutdown()


# --- figures and admin ------------------------------------------------------------------------------

@needs_local_backend
def test_vision_service_figures_are_in_the_concurrency_api_and_metrics(device, fake_vision, client, settings):
    from asgiref.sync import async_to_sync

    settings.XIAOZHI_MONITORING_PUBLIC = True

    assert async_to_sync(upload)().status_code == 200
    body = client.get("/api/performance/concurrency/").json()
    assert body["services"]["vllm"]["completed"] >= 1
    assert body["configuration"]["values"]["services"]["vllm"]["max_concurrent"] >= 1
    text = client.get("/metrics").content.decode()
    assert 'xiaozhi_service_completed_total{service="vllm"}' in text
    assert "xiaozhi_vision_requests_total" in text


@needs_local_backend
def test_the_admin_shows_photo_questions_on_the_device_page_and_in_their_list(device, fake_vision, admin_client):
    from asgiref.sync import async_to_sync

    assert async_to_sync(upload)().status_code == 200
    dev, _ = device
    page = admin_client.get(f"/admin/devices/device/{dev.pk}/change/").content.decode()
    assert "recent-photo-questions" in page and QUESTION in page and "I see a red square" in page
    listing = admin_client.get("/admin/devices/visionquery/").content.decode()
    assert QUESTION in listing
    row = VisionQuery.objects.get()
    assert "Not kept" in admin_client.get(f"/admin/devices/visionquery/{row.pk}/change/").content.decode()


def test_the_agent_form_offers_the_registrys_vision_providers_and_none(admin_client, settings):
    settings.XIAOZHI_VLLM_BASE_URL = ""
    page = admin_client.get("/admin/devices/agentconfig/add/").content.decode()
    assert 'name="vllm_provider"' in page and 'value="openai"' in page and 'value="none"' in page
    response = admin_client.post("/admin/devices/agentconfig/add/", {"name": "eyes", "vllm_provider": "openai"})
    assert response.status_code == 200 and "XIAOZHI_VLLM_BASE_URL" in response.content.decode()
    assert not AgentConfig.objects.filter(name="eyes").exists()


# --- configuration ----------------------------------------------------------------------------------

def test_start_up_checks_name_the_vision_settings(settings):
    from voice.checks import check_voice_settings

    settings.XIAOZHI_VLLM_PROVIDER = ""
    assert check_voice_settings() == []  # no vision is a valid server
    settings.XIAOZHI_VLLM_PROVIDER, settings.XIAOZHI_VLLM_BASE_URL = "openai", ""
    [error] = check_voice_settings()
    assert error.id == "voice.E015" and "XIAOZHI_VLLM_BASE_URL" in error.msg
    settings.XIAOZHI_VLLM_PROVIDER = "llava"
    [error] = check_voice_settings()
    assert error.id == "voice.E001" and "XIAOZHI_VLLM_PROVIDER" in error.msg


def test_health_wants_a_vision_worker_only_when_vision_is_configured(settings):
    from voice.workers import heartbeat

    settings.XIAOZHI_VLLM_PROVIDER = ""
    assert heartbeat.missing_services({}) == ["asr", "llm", "tts"]
    settings.XIAOZHI_VLLM_PROVIDER = "openai"
    assert heartbeat.missing_services({}) == ["asr", "llm", "tts", "vllm"]
    assert heartbeat.missing_services({"asr": [1], "llm": [1], "tts": [1], "vllm": [1]}) == []


def test_the_registry_builds_no_vision_provider_when_none_is_configured(settings):
    from voice.providers.base import ProviderUnavailable

    settings.XIAOZHI_VLLM_PROVIDER = ""
    with pytest.raises(ProviderUnavailable, match="XIAOZHI_VLLM_PROVIDER"):
        registry.get_vllm()
    assert "vllm" not in registry.preload(["vllm"])
    assert registry.resolve("vllm", registry.NONE) == "" and registry.resolve("llm", "") == django_settings.XIAOZHI_LLM_PROVIDER

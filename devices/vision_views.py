"""``POST /xiaozhi/vision/``: the camera tool's upload (protocol §1.11).

The firmware posts multipart ``question`` + ``file`` (a JPEG) with ``Device-Id``, ``Client-Id`` and
``Authorization: Bearer <token>`` (the token from MCP ``initialize``), and hands the body of a 200
answer to the LLM as the tool's result; any other status becomes "Failed to upload photo, status
code N". So:

- a request that is wrong is refused with a 4xx and a one-line plain-text reason: no or wrong token
  401, a device not bound while activation is required 403, no question or no file 400, a body or
  photo over ``XIAOZHI_VISION_MAX_IMAGE_BYTES`` 413, a file that is not a JPEG or PNG (by its first
  bytes, not its declared type) 415, not a POST 405, over performance.yaml's ``vision_per_address``
  or ``vision_per_device`` rate limit 429 with Retry-After;
- everything the LLM should hear is a 200 with plain text: the answer, or a short "busy" when the
  ``vllm`` service's queue is full (at once, never a 500 or a hang), or an apology when the vision
  provider failed or took longer than ``services.vllm.timeout``. ``X-Vision-Status`` tells them
  apart (ok, busy, error, off) for tools and tests.

The view is async: the model call waits on the ``vllm`` service (its own threads or a Celery
worker) and the database steps run through ``sync_to_async``, so a slow vision model holds neither
the event loop nor the one thread Django's synchronous views and the sockets' database calls share.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from devices import rate_limits, vision
from devices.client_address import client_address
from devices.device_ids import normalize_device_id
from voice import live_stats
from voice.workers import ServiceBusy, ServiceTimeout, services

log = logging.getLogger(__name__)

BUSY = "I can't look at the photo right now: the picture service is busy. Please ask again in a moment."
FAILED = "Sorry, I couldn't make out the photo just now. Please try again."
OFF = "Looking at photos is not available on this server."
MAX_QUESTION_CHARS = 1000
MULTIPART_SLACK = 64 * 1024  # the question and the multipart framing beside the photo
MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


def _text(body: str, status: int = 200, state: str | None = None) -> HttpResponse:
    response = HttpResponse(body.rstrip("\n") + "\n", status=status, content_type="text/plain; charset=utf-8")
    if state:
        response["X-Vision-Status"] = state
    return response


_hit = sync_to_async(rate_limits.hit, thread_sensitive=False)  # the cache may be Redis


def _too_many(verdict: rate_limits.Verdict) -> HttpResponse:
    response = _refuse(429, f"Too many photo uploads; retry in {verdict.retry_after} s.")
    response["Retry-After"] = str(verdict.retry_after)
    return response


def _refuse(status: int, reason: str) -> HttpResponse:
    live_stats.incr(f"vision_refused_{status}")
    return _text(reason, status)


def image_type(data: bytes) -> str | None:
    """The image's type from its first bytes (JPEG, PNG), whatever the upload claimed; else None."""
    for magic, mime in MAGIC:
        if data.startswith(magic):
            return mime
    return None


@dataclass
class Upload:
    question: str = ""
    image: bytes | None = None  # None: no file field
    size: int = 0  # of the photo, or of the whole body when that alone is over the limit
    malformed: str = ""


def _read_upload(request) -> Upload:
    """Read (at most the limit plus the framing) and parse the multipart body; blocking, run off the loop.

    Parsed here rather than through ``request.POST``: the firmware sends its body chunked, without
    Content-Length, and Django's own parser takes a body without one for an empty one."""
    cap = settings.XIAOZHI_VISION_MAX_IMAGE_BYTES + MULTIPART_SLACK
    body = request.read(cap + 1)
    if len(body) > cap:
        return Upload(size=len(body))
    meta = {**request.META, "CONTENT_LENGTH": str(len(body))}
    try:
        fields, files = MultiPartParser(meta, io.BytesIO(body), request.upload_handlers, request.encoding).parse()
    except MultiPartParserError as exc:
        return Upload(malformed=str(exc))
    question = (fields.get("question") or "").strip()[:MAX_QUESTION_CHARS]
    upload = files.get("file")
    if upload is None:
        return Upload(question)
    return Upload(question, upload.read(), upload.size)


@csrf_exempt
async def upload(request):
    arrived = time.monotonic()
    if request.method != "POST":
        return _refuse(405, "POST a multipart question and file (the camera tool's upload).")
    address = client_address(request)
    if not rate_limits.exempt(address):
        verdict = await _hit("vision_per_address", address)
        if not verdict.allowed:
            return _too_many(verdict)
    authorization = request.headers.get("Authorization", "").strip()
    token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if not token:
        return _refuse(401, "Missing Authorization: Bearer <token> (the vision token from MCP initialize).")
    raw_device_id = request.headers.get("Device-Id", "").strip()
    device_id = normalize_device_id(raw_device_id)
    if device_id is None:
        return _refuse(400, f"Invalid Device-Id {raw_device_id!r}." if raw_device_id else "Missing Device-Id header.")
    client_id = request.headers.get("Client-Id", "").strip() or device_id
    if not vision.verify_vision_token(token, client_id, device_id):
        return _refuse(401, "Invalid or expired vision token for this device.")
    verdict = await _hit("vision_per_device", device_id)
    if not verdict.allowed:
        return _too_many(verdict)
    try:
        context = await sync_to_async(vision.upload_context)(device_id)
    except DatabaseError:
        log.exception("vision: could not read device %s", device_id)
        return _text(FAILED, state="error")
    if context is None:
        return _refuse(403, f"Unknown device {device_id}: it must call the OTA endpoint first.")
    if context.needs_activation:
        return _refuse(403, "This device is not bound yet: enter its activation code in the admin first.")
    limit = settings.XIAOZHI_VISION_MAX_IMAGE_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit + MULTIPART_SLACK:
        return _refuse(413, f"The upload is {declared} bytes; photos may be at most {limit} bytes.")
    if not request.content_type.startswith("multipart/form-data"):
        return _refuse(400, "Send multipart/form-data with a question field and a file field.")
    parsed = await sync_to_async(_read_upload, thread_sensitive=False)(request)
    question, image = parsed.question, parsed.image
    if parsed.size > limit:
        return _refuse(413, f"The upload is {parsed.size} bytes; photos may be at most {limit} bytes.")
    if parsed.malformed:
        return _refuse(400, f"Malformed multipart body: {parsed.malformed}")
    if not question:
        return _refuse(400, "Missing question: the multipart field 'question' is empty or absent.")
    if image is None:
        return _refuse(400, "Missing file: the multipart field 'file' with the photo is absent.")
    mime = image_type(image)
    if mime is None:
        return _refuse(415, "The file is not a JPEG or PNG photo.")
    if not context.vllm_provider:
        return _text(OFF, state="off")

    live_stats.incr("vision_requests")
    error = ""
    # Taken with no await before the service admits the call, so rows in asked_at order are in the
    # order the vision service's queue saw them.
    asked_at = timezone.now()
    try:
        answer = await services()["vllm"].call("describe_image", context.vllm_provider, question, image, mime,
                                               context.vllm_model or None, owner=device_id)
        state = "ok"
    except ServiceBusy as exc:
        answer, state, error = BUSY, "busy", f"busy: {exc}"
        live_stats.incr("vision_busy")
    except ServiceTimeout as exc:
        answer, state, error = FAILED, "error", str(exc)
        live_stats.incr("errors:vision")
    except Exception as exc:  # noqa: BLE001 - the device hears an apology, never a 500
        log.warning("vision: %s for %s failed: %s", context.vllm_provider, device_id, exc)
        answer, state, error = FAILED, "error", f"{type(exc).__name__}: {exc}"
        live_stats.incr("errors:vision")
    answer = str(answer or "").strip() or FAILED
    try:
        await sync_to_async(vision.record_query)(
            context, asked_at=asked_at, question=question, answer=answer, error=error,
            seconds=round(time.monotonic() - arrived, 3), image=image, image_type=mime)
    except DatabaseError:
        log.exception("vision: could not record the photo question of %s", device_id)
    return _text(answer, state=state)

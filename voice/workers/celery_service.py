"""Voice services run by Celery workers (``XIAOZHI_WORKER_BACKEND=celery``): the Daphne side.

One Celery queue per service (``<prefix>.asr``, ``.llm``, ``.tts``, ``.vllm``); the VAD stays in process (per-
session state, ~0.3 ms a chunk: a round trip would cost more than the work). Admission, timeouts and
figures are kept per Daphne process by the same ``Admission`` as the local backend, so monitoring
reads one shape. Here "queued" means submitted and not yet started by a worker, "active" started;
the worker reports when it started, so the wait time is the time spent in the broker.

A call's way:
  1. arguments, msgpack-packed, go to a Redis key that expires with the call (kombu's Redis
     transport base64-encodes task bodies: a 3 s utterance would grow by a third); the Celery task
     carries only the call id, the operation name, the reply channel and the deadline;
  2. the worker answers on a per-call channel-layer channel (``new_channel()``, msgpack, so Opus
     bytes travel as they are): ``started``, then ``item`` messages with sequence numbers, then one
     of ``done`` / ``error`` / ``cancelled``;
  3. a consumer that stops early (abort, barge-in, timeout) sets the call's cancel key, which the
     worker checks before it starts and between items, so the worker slot is freed at once; the
     reply channel is drained in the background until the worker's last word, so no stray message
     stays buffered in this process.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import msgpack
from channels.layers import get_channel_layer
from django.conf import settings

from voice.conf import ServiceLimits
from voice.workers import operations
from voice.workers.admission import Admission, ServiceTimeout, StreamClock, Ticket

log = logging.getLogger(__name__)

TASK_NAME = "voice.run_operation"
KEY_PREFIX = "xiaozhi:voice:call:"
REMOTE_SERVICES = ("asr", "llm", "tts", "vllm")  # the services workers serve; the VAD stays in Daphne
DRAIN_SECONDS = 5.0  # at most this long listening for a cancelled call's last message


class RemoteOperationError(RuntimeError):
    """The operation failed in the worker; the message names the original error."""


def queue_name(service: str) -> str:
    return f"{settings.XIAOZHI_WORKER_QUEUE_PREFIX}.{service}"


def args_key(call_id: str) -> str:
    return f"{KEY_PREFIX}{call_id}:args"


def cancel_key(call_id: str) -> str:
    return f"{KEY_PREFIX}{call_id}:cancel"


@functools.cache
def redis_client():
    """The broker's Redis, where calls' arguments and cancel marks live (thread-safe pool)."""
    import redis

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def pack(args: tuple) -> bytes:
    return msgpack.packb(list(args), use_bin_type=True)


def unpack(blob: bytes) -> list:
    return msgpack.unpackb(blob, raw=False)


class CeleryService:
    """A ``voice.workers.base.Service``, as ``LocalService`` is, whose calls Celery workers run."""

    def __init__(self, limits: ServiceLimits, queue: str | None = None):
        self.limits = limits
        self.name = limits.name
        self.queue = queue or queue_name(limits.name)
        self.admission = Admission(limits)
        self._drains: set[asyncio.Task] = set()  # owned here; cancelled by shutdown()
        # One thread submits this service's calls, so they reach the broker in the order they were
        # admitted (a shared pool could let a later call overtake an earlier one by a millisecond).
        self._submitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"voice-submit-{self.name}")

    def occupancy(self) -> dict:
        return self.admission.occupancy()

    def health(self) -> str:
        return self.admission.health()

    async def call(self, operation: str, *args, owner: str | None = None, timeout: float | None = None,
                   deadline: float | None = None):
        """``deadline`` is accepted for the seam's sake and not used: a broker queue is FIFO."""
        if operations.get(operation).streams:
            raise TypeError(f"{operation} is a stream: use stream()")
        limit = timeout or self.limits.timeout
        exchange = self._exchange(operation, args, owner, limit, None)
        try:
            async for value in exchange:
                return value
        finally:
            await exchange.aclose()

    async def stream(self, operation: str, *args, owner: str | None = None, first_item_timeout: float | None = None,
                     deadline: float | None = None) -> AsyncIterator:
        if not operations.get(operation).streams:
            raise TypeError(f"{operation} is not a stream: use call()")
        exchange = self._exchange(operation, args, owner, self.limits.timeout, first_item_timeout, streams=True)
        try:
            async for item in exchange:
                yield item
        finally:
            await exchange.aclose()

    async def _exchange(self, operation: str, args: tuple, owner: str | None, timeout: float,
                        first_item_timeout: float | None, streams: bool = False):
        """Submit one call and yield what comes back: the items of a stream, or a call's result.
        A stream's waits follow ``StreamClock`` (first item and gaps counted from the worker's start)."""
        ticket = self.admission.admit(owner)
        loop = asyncio.get_running_loop()
        call_id = uuid.uuid4().hex
        deadline = loop.time() + timeout
        limits = self.limits if streams else dataclasses.replace(self.limits, timeout=timeout, first_token_timeout=None,
                                                                 stall_timeout=None)
        clock = StreamClock(limits, loop.time(), first_item_timeout)
        layer = get_channel_layer()
        reply = None
        ended = ok = False  # ended: the worker sent its last message (or was never asked)
        try:
            reply = await layer.new_channel()
            await loop.run_in_executor(self._submitter, self._submit, call_id, operation, args, reply, timeout)
            expected = 0
            while True:
                try:
                    async with asyncio.timeout_at(clock.limit()):
                        message = await layer.receive(reply)
                except TimeoutError:
                    self.admission.count_timeout(ticket)
                    raise ServiceTimeout(f"{self.name} {clock.what()} took too long "
                                         f"(no answer from a worker on {self.queue})") from None
                kind = message.get("kind")
                if kind == "started":
                    ticket.start(waited=max(message["at"] - message["enqueued"], 0.0))
                    clock.started(loop.time())
                    continue
                if kind in ("item", "done") and message.get("seq") != expected:
                    ended = kind == "done"
                    raise RemoteOperationError(f"{self.name}: message {message.get('seq')} arrived, {expected} expected")
                if kind == "item":
                    expected += 1
                    clock.item(loop.time())
                    yield message["value"]
                elif kind == "done":
                    ended = ok = True
                    if "value" in message:
                        yield message["value"]
                    return
                else:
                    ended = True
                    raise RemoteOperationError(f"{operation} failed in the worker: {message.get('error', kind)}")
        finally:
            if ticket.started is None and ok:
                ticket.start(waited=None)
            ticket.finish(ok)
            if not ended and reply is not None:
                self._cancel(call_id, reply, deadline)

    def _submit(self, call_id: str, operation: str, args: tuple, reply: str, timeout: float) -> None:
        """Blocking (run off the loop): park the arguments, then send the task to the service's queue."""
        from xiaozhi.celery import app

        ttl = max(timeout, 1.0)
        redis_client().set(args_key(call_id), pack(args), px=int(ttl * 1000) + 1000)
        app.send_task(
            TASK_NAME,
            kwargs={"call_id": call_id, "operation": operation, "reply": reply,
                    "deadline": time.time() + timeout, "enqueued": time.time()},
            queue=self.queue,
            expires=ttl,
            ignore_result=True,
        )

    def _cancel(self, call_id: str, reply: str, deadline: float) -> None:
        """Tell the worker to stop (or never start), then listen for its last word in the background."""
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, _mark_cancelled, call_id).add_done_callback(_log_failure)
        until = min(deadline, loop.time() + DRAIN_SECONDS)
        task = loop.create_task(_drain(reply, until), name=f"drain-{self.name}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    def shutdown(self) -> None:
        for task in list(self._drains):
            task.cancel()
        self._submitter.shutdown(wait=False, cancel_futures=True)


def _mark_cancelled(call_id: str) -> None:
    client = redis_client()
    client.set(cancel_key(call_id), b"1", ex=120)
    client.delete(args_key(call_id))


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not cancel a worker call: %s", future.exception())


async def _drain(reply: str, until: float) -> None:
    layer = get_channel_layer()
    try:
        async with asyncio.timeout_at(until):
            while (await layer.receive(reply)).get("kind") not in ("done", "error", "cancelled"):
                pass
    except TimeoutError:
        pass
    except Exception as exc:  # noqa: BLE001 - best effort
        log.debug("draining %s: %s", reply, exc)
    finally:
        # Whatever the worker still sends after this point would sit in the layer's buffer.
        getattr(layer, "receive_buffer", {}).pop(reply, None)

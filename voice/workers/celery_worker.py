"""Voice services run by Celery workers: the worker side.

``serve`` runs one call (``voice.tasks.run_operation``): it takes the parked arguments, announces
that it started, runs the operation and sends the result, or each stream item with a sequence
number, to the caller's reply channel, ending with ``done``, ``error`` or ``cancelled``. It checks
the call's cancel key and deadline before starting and between items, so a call the caller gave up
on frees the worker slot at once.

Workers load and warm the models of the queues they consume when they start (``worker_init`` for
the threads/solo pools, ``worker_process_init`` in each prefork child), so the first call is fast.
Start them with ``manage.py voice_worker asr llm tts``: one worker process per service, each taking
its service's ``max_concurrent`` calls (the command's docstring says why not one worker for all).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from celery.signals import worker_init, worker_process_init, worker_shutdown
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from voice.workers import operations
from voice.workers.celery_service import REMOTE_SERVICES, args_key, cancel_key, redis_client, unpack

log = logging.getLogger(__name__)

_consumed_kinds: list[str] = []


class ReplySender:
    """Sends reply messages from worker threads through one channel layer on one event loop
    (a channel layer's connections belong to the loop that made them)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.layer = get_channel_layer()
        threading.Thread(target=self.loop.run_forever, name="voice-reply-sender", daemon=True).start()

    def send(self, channel: str, message: dict, give_up) -> bool:
        """Send, waiting while the channel is full (a slow consumer) unless ``give_up()`` says stop."""
        while True:
            future = asyncio.run_coroutine_threadsafe(self.layer.send(channel, {"type": "voice.reply", **message}), self.loop)
            try:
                future.result(timeout=10)
                return True
            except ChannelFull:
                if give_up():
                    return False
                time.sleep(0.02)


_shared: dict[type, object] = {}
_shared_lock = threading.Lock()


def _shared_instance(cls):
    """One instance of ``cls`` per worker process, made on first use (each owns a thread)."""
    with _shared_lock:
        if cls not in _shared:
            _shared[cls] = cls()
        return _shared[cls]


def sender() -> ReplySender:
    return _shared_instance(ReplySender)


class _CallState:
    def __init__(self, call_id: str, deadline: float):
        self.call_id = call_id
        self.deadline = deadline
        self.cancel = threading.Event()

    def given_up(self) -> bool:
        """The caller cancelled or its deadline passed (it has stopped listening)."""
        if time.time() > self.deadline:
            self.cancel.set()
        return self.cancel.is_set()


class CancelWatcher:
    """Polls the cancel keys of this process's running calls every 50 ms, all in one round trip, and
    sets their events: a stream stops even while its model is between items (before a first token)."""

    INTERVAL = 0.05

    def __init__(self):
        self._calls: dict[str, _CallState] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="voice-cancel-watcher", daemon=True).start()

    def watch(self, state: _CallState) -> None:
        with self._lock:
            self._calls[state.call_id] = state

    def forget(self, state: _CallState) -> None:
        with self._lock:
            self._calls.pop(state.call_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL)
            with self._lock:
                calls = list(self._calls.values())
            if not calls:
                continue
            try:
                pipe = redis_client().pipeline(transaction=False)
                for state in calls:
                    pipe.exists(cancel_key(state.call_id))
                marks = pipe.execute()
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: deadlines still apply
                log.warning("cancel watcher: %s", exc)
                marks = [0] * len(calls)
            now = time.time()
            for state, marked in zip(calls, marks):
                if marked or now > state.deadline:
                    state.cancel.set()


def watcher() -> CancelWatcher:
    return _shared_instance(CancelWatcher)


def serve(call_id: str, operation: str, reply: str, deadline: float, enqueued: float) -> str:
    """Run one call; returns how it ended (for the worker's log)."""
    started = time.time()
    state = _CallState(call_id, deadline)
    out = sender()

    def send(message: dict) -> bool:
        return out.send(reply, message, state.given_up)

    blob = redis_client().getdel(args_key(call_id))
    if blob is None or state.given_up() or redis_client().exists(cancel_key(call_id)):
        send({"kind": "cancelled"})
        return "cancelled before start"
    send({"kind": "started", "at": started, "enqueued": enqueued})
    watcher().watch(state)
    try:
        op = operations.get(operation)
        args = unpack(blob)
        if not op.streams:
            send({"kind": "done", "seq": 0, "value": op.fn(*args)})
            return "done"
        seq = 0
        items = op.fn(*args, cancel=state.cancel)
        try:
            for item in items:
                if state.given_up() or not send({"kind": "item", "seq": seq, "value": item}):
                    send({"kind": "cancelled"})
                    return f"cancelled after {seq} items"
                seq += 1
        finally:
            state.cancel.set()
            items.close()
        send({"kind": "done", "seq": seq})
        return f"done, {seq} items"
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which ends the turn cleanly
        log.warning("voice operation %s failed: %s", operation, exc, exc_info=True)
        send({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
        return "error"
    finally:
        watcher().forget(state)


def kinds_for_queues(queues) -> list[str]:
    prefix = f"{settings.XIAOZHI_WORKER_QUEUE_PREFIX}."
    return [q[len(prefix):] for q in queues if q.startswith(prefix) and q[len(prefix):] in REMOTE_SERVICES]


def _preload(kinds: list[str]) -> None:
    if not kinds:
        return
    from voice.providers.registry import preload

    spent = preload(kinds)
    log.info("voice worker ready: %s", ", ".join(f"{k} {s:.2f} s" for k, s in spent.items()))
    from voice.workers import heartbeat

    heartbeat.start(kinds)  # from now on /health sees this worker and its models


@worker_init.connect
def _on_worker_init(sender=None, **kwargs):
    queues = list(sender.app.amqp.queues.consume_from or {}) if sender is not None else []
    _consumed_kinds[:] = kinds_for_queues(queues)
    pool = getattr(sender, "pool_cls", None)
    pool_name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" not in pool_name:  # prefork children load their own copy (worker_process_init)
        _preload(_consumed_kinds)


@worker_process_init.connect
def _on_worker_process_init(**kwargs):
    _preload(_consumed_kinds)


@worker_shutdown.connect
def _on_worker_shutdown(**kwargs):
    if _consumed_kinds:
        from voice.workers import heartbeat

        heartbeat.withdraw()  # gone now, not "live" for the heartbeat's TTL


"""The dispatch seam's interface: what a voice service is, whichever backend runs it, and the
per-process set of them.

``LocalService`` (threads in this process) and ``CeleryService`` (Celery workers) are both a
``Service``: callers (the turn, the VAD batcher, monitoring) use only what is declared here, so the
backend is a setting (``XIAOZHI_WORKER_BACKEND``), not a code path. Work is named by operation
(``voice.workers.operations``), because a name and plain data can travel to a worker and a bound
method cannot.
"""
from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

from voice.conf import SERVICES, ServiceLimits, service_limits


@runtime_checkable
class Service(Protocol):
    """One voice service (vad, asr, llm, tts) with admission (a bounded queue, a per-device share),
    timeouts and figures. A full service raises ``ServiceBusy`` at once; a late one ``ServiceTimeout``."""

    name: str
    limits: ServiceLimits

    async def call(self, operation: str, *args, owner: str | None = None, timeout: float | None = None,
                   deadline: float | None = None) -> Any:
        """Run a non-streaming operation and return its result. ``owner``: the device (its share);
        ``deadline`` (``time.monotonic()``): when the result is needed, for the queue's order."""

    def stream(self, operation: str, *args, owner: str | None = None, first_item_timeout: float | None = None,
               deadline: float | None = None) -> AsyncIterator:
        """Iterate a streaming operation's items; closing the iterator early stops the producer."""

    def occupancy(self) -> dict:
        """Active and queued calls and the counters of admission (``Admission.occupancy``)."""

    def health(self) -> str:
        """"ok", or why the service looks stalled (``Admission.health``): read by ``/health``."""

    def shutdown(self) -> None:
        """Stop taking calls and release the service's threads or background tasks."""


@runtime_checkable
class InProcessService(Service, Protocol):
    """A service in this process can also run a plain callable: for work bound to state that stays
    here (the VAD's per-session models). Only ``LocalService`` is one; the VAD always uses it."""

    async def run(self, fn: Callable, *args, owner: str | None = None, timeout: float | None = None,
                  deadline: float | None = None) -> Any:
        """Run blocking ``fn(*args)`` on the service's threads."""


def make_service(limits: ServiceLimits, backend: str | None = None) -> Service:
    """A service of the configured backend (``XIAOZHI_WORKER_BACKEND``). The VAD always runs here:
    it keeps per-session state and costs ~0.3 ms a chunk, less than a round trip to a worker."""
    from django.conf import settings

    backend = backend or getattr(settings, "XIAOZHI_WORKER_BACKEND", "local")
    if backend == "celery" and limits.name != "vad":
        from voice.workers.celery_service import CeleryService

        return CeleryService(limits)
    from voice.workers.local import LocalService

    return LocalService(limits)


_built: dict[str, Service] | None = None
_build_lock = threading.Lock()


def services() -> dict[str, Service]:
    """The per-process services, built from performance.yaml on first use and shared by every session."""
    global _built
    if _built is None:
        with _build_lock:
            if _built is None:
                _built = {name: make_service(service_limits(name)) for name in SERVICES}
    return _built


def built_services() -> dict[str, Service]:
    """The services if this process has built them, else nothing: for readers such as monitoring,
    which must not build the services (and their threads) as a side effect of looking."""
    return _built or {}

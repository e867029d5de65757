"""The dispatch seam: every model call names an operation (``voice.workers.operations``) and goes
through a ``Service`` (``voice.workers.base``) with admission (a bounded queue, a per-device share),
a timeout and figures. ``services()`` returns the per-process set: in-process threads by default,
Celery workers with ``XIAOZHI_WORKER_BACKEND=celery`` (the VAD stays in process either way)."""
from voice.workers.admission import ServiceBusy, ServiceTimeout
from voice.workers.base import InProcessService, Service, built_services, make_service, services
from voice.workers.local import LocalService

__all__ = ["InProcessService", "LocalService", "Service", "ServiceBusy", "ServiceTimeout", "built_services",
           "make_service", "services"]

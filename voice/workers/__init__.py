"""The dispatch seam: every model call names an operation (``voice.workers.operations``) and goes
through a service with admission (a bounded queue, a per-device share), a timeout and statistics.
``services()`` returns the per-process set: in-process threads by default, Celery workers with
``XIAOZHI_WORKER_BACKEND=celery`` (the VAD stays in process either way)."""
from voice.workers.admission import ServiceBusy, ServiceTimeout
from voice.workers.local import LocalService, make_service, services

__all__ = ["LocalService", "ServiceBusy", "ServiceTimeout", "make_service", "services"]

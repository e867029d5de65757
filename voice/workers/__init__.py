"""The dispatch seam: every model call goes through a ``Service`` with a concurrency bound, a
bounded queue and a timeout. ``services()`` returns the per-process set."""
from voice.workers.local import LocalService, ServiceBusy, ServiceTimeout, services

__all__ = ["LocalService", "ServiceBusy", "ServiceTimeout", "services"]

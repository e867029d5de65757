"""ASGI entry point served by Daphne: HTTP (OTA, admin, static) and the device WebSocket.

Django must be set up (``get_asgi_application``) before the consumers are imported. Models are
loaded and warmed here, before the first connection is accepted, so the first turn after start is
as fast as the tenth.
"""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from voice.checks import refuse_insecure_start  # noqa: E402

refuse_insecure_start()  # e.g. device auth on with the public default SECRET_KEY

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from devices.auth import DeviceAuthMiddleware  # noqa: E402
from devices.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": DeviceAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)

if settings.XIAOZHI_PRELOAD_MODELS:
    from voice.providers.registry import KINDS, preload

    # With Celery workers the server itself runs only the VAD (and the end-of-turn model beside it); the workers load the other models.
    preload(("vad", "turn") if settings.XIAOZHI_WORKER_BACKEND == "celery" else KINDS)

import gc  # noqa: E402

from voice import gc_watch  # noqa: E402

if settings.XIAOZHI_GC_FREEZE:
    # What start-up made (Django, the models' Python objects: ~120 000) lives as long as the process:
    # moved out of the collector's sight, a full collection no longer walks it (64 ms -> ~0 measured
    # at start-up), and the event loop no longer stands still that long under load.
    gc.collect()
    gc.freeze()
gc_watch.install()  # after the start-up collection: what it counts is serving's

# Metric snapshots and alert evaluation on the embedded default (Celery beat does it with Redis).
from monitoring.scheduler import start_if_configured  # noqa: E402

start_if_configured()

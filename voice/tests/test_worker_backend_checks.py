"""Start-up checks of XIAOZHI_WORKER_BACKEND: errors name the setting to fix."""
from voice.checks import check_worker_backend

REDIS_LAYER = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://h:6379/0"]}}}
MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def ids(errors):
    return [e.id for e in errors]


def test_the_local_backend_needs_nothing(settings):
    settings.XIAOZHI_WORKER_BACKEND = "local"
    settings.CHANNEL_LAYERS = MEMORY_LAYER
    assert check_worker_backend() == []


def test_celery_without_redis_names_the_broker_and_the_channel_layer(settings):
    settings.XIAOZHI_WORKER_BACKEND = "celery"
    settings.CELERY_BROKER_URL = "memory://"
    settings.CHANNEL_LAYERS = MEMORY_LAYER
    errors = check_worker_backend()
    assert ids(errors) == ["voice.E011", "voice.E012"]
    assert all("XIAOZHI_WORKER_BACKEND=celery" in e.msg for e in errors)
    assert "CELERY_BROKER_URL" in errors[0].msg and "REDIS_URL" in errors[1].hint


def test_celery_with_redis_passes(settings):
    settings.XIAOZHI_WORKER_BACKEND = "celery"
    settings.CELERY_BROKER_URL = "redis://h:6379/0"
    settings.CHANNEL_LAYERS = REDIS_LAYER
    assert check_worker_backend() == []


def test_an_unknown_backend_is_named(settings):
    settings.XIAOZHI_WORKER_BACKEND = "rq"
    errors = check_worker_backend()
    assert ids(errors) == ["voice.E010"] and "XIAOZHI_WORKER_BACKEND='rq'" in errors[0].msg

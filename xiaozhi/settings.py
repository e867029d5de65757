"""All settings, in one place, read from the environment.

With no environment set this is the embedded default: SQLite, the in-memory channel layer, a
local-memory cache and in-process voice workers. ``DATABASE_URL`` switches to MySQL (utf8mb4) and
``REDIS_URL`` to Redis for the channel layer and cache. Voice-service limits come from
``performance.yaml`` with its machine profiles and overrides (``voice/conf.py``; the database and Redis
pool sizes too); the checks in ``voice/checks.py`` validate both at start.
"""
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from voice.conf import PerformanceConfigError
from voice.conf import load as load_performance
from xiaozhi.env import database_from_url, env_bool, env_choice, env_float, env_int, env_list, env_networks, env_str, env_time_zone

# Whisper (CTranslate2) and llama.cpp each bring an OpenMP runtime whose idle threads busy-wait by
# default; in one process they starve each other on a small machine (LLM first token 2 s instead of
# 50 ms after an ASR call). Must be set before either library loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("XIAOZHI_DATA_DIR", str(BASE_DIR / "data")))

# --- Performance: performance.yaml, the machine profile, data/.performance.yaml, XIAOZHI_PERF__* ---------
# Loaded here (not only by the voice side) because the database and Redis pool settings below come from it.
XIAOZHI_PERFORMANCE_FILE = env_str("XIAOZHI_PERFORMANCE_FILE", str(BASE_DIR / "performance.yaml"))
XIAOZHI_PERFORMANCE_OVERRIDES = env_str("XIAOZHI_PERFORMANCE_OVERRIDES", str(DATA_DIR / ".performance.yaml"))
try:
    PERFORMANCE = load_performance(XIAOZHI_PERFORMANCE_FILE, XIAOZHI_PERFORMANCE_OVERRIDES, os.environ)
except PerformanceConfigError as exc:
    raise ImproperlyConfigured(f"performance configuration: {exc}") from None

# Public: anyone can sign device tokens with it. voice/checks.py refuses it when device auth is on.
DEFAULT_SECRET_KEY = "dev-only-insecure-key-change-me-in-production"
SECRET_KEY = env_str("SECRET_KEY", DEFAULT_SECRET_KEY)
DEBUG = env_bool("DEBUG", False)


def _this_machine_hosts() -> list[str]:
    """The names and addresses devices on the LAN may use to reach `make run` (never "*": the OTA
    answer's WebSocket URL may come from the Host header, which must then name this machine)."""
    import socket

    import psutil

    hosts = {"localhost", "127.0.0.1", "[::1]", socket.gethostname()}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET:
                hosts.add(address.address)
            elif address.family == socket.AF_INET6 and "%" not in address.address:
                hosts.add(f"[{address.address}]")
    return sorted(hosts)


ALLOWED_HOSTS = env_list("ALLOWED_HOSTS") or _this_machine_hosts()
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- The client's address: proxies whose X-Forwarded-For / X-Real-IP are believed (devices/client_address.py)
XIAOZHI_TRUSTED_PROXIES = env_networks("XIAOZHI_TRUSTED_PROXIES")
# Addresses exempt from the per-address rate limits and socket cap (a load generator, a monitoring probe).
XIAOZHI_RATE_LIMIT_EXEMPT = env_networks("XIAOZHI_RATE_LIMIT_EXEMPT")

# --- HTTPS (behind a TLS proxy): secure cookies, HSTS, HTTP redirected to HTTPS except the device paths
# (firmware may be built with a plain http:// OTA URL; a redirect would turn its POST into a GET).
XIAOZHI_HTTPS = env_bool("XIAOZHI_HTTPS", False)
if XIAOZHI_HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^xiaozhi/", r"^health$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
if XIAOZHI_TRUSTED_PROXIES:
    # The TLS proxy says the request came over HTTPS; only a trusted proxy's word counts for the client
    # address, and this header must be set (or stripped) by that proxy too.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "devices",
    "voice",
    "monitoring",
    "loadtest",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "devices.login_throttle.AdminLoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "xiaozhi.urls"
ASGI_APPLICATION = "xiaozhi.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Storage: SQLite by default, MySQL with DATABASE_URL -------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL, PERFORMANCE.database.conn_max_age,
                                              PERFORMANCE.database.conn_health_checks,
                                              PERFORMANCE.database.connect_timeout,
                                              PERFORMANCE.database.query_timeout)}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(DATA_DIR / "db.sqlite3")),
            # Several writers (one per device session) share the file: wait instead of failing.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer and cache: in memory by default, Redis with REDIS_URL ----------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, the same as channels-redis's
                # 5 s blocking pop: an idle consumer would race its own timeout and die (hence a
                # channel_layer_socket_timeout of at least 6 s, checked in voice/conf.py).
                "hosts": [{"address": REDIS_URL,
                           "socket_timeout": PERFORMANCE.redis.channel_layer_socket_timeout,
                           "socket_connect_timeout": PERFORMANCE.redis.socket_connect_timeout,
                           "max_connections": PERFORMANCE.redis.max_connections}],
                "prefix": env_str("CHANNELS_PREFIX", "xiaozhi"),
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "xiaozhi",
            "OPTIONS": {
                "CONNECTION_POOL_KWARGS": {"max_connections": PERFORMANCE.redis.max_connections},
                "SOCKET_TIMEOUT": PERFORMANCE.redis.socket_timeout,
                "SOCKET_CONNECT_TIMEOUT": PERFORMANCE.redis.socket_connect_timeout,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL or "cache+memory://")
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL and not env_str("CELERY_BROKER_URL")
# Where model calls (ASR, LLM, TTS) run: "local" threads in each Daphne process, or "celery"
# workers consuming the queues <prefix>.asr/.llm/.tts (needs Redis as broker and channel layer).
XIAOZHI_WORKER_BACKEND = env_str("XIAOZHI_WORKER_BACKEND", "local")
XIAOZHI_WORKER_QUEUE_PREFIX = env_str("XIAOZHI_WORKER_QUEUE_PREFIX", "voice")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}

# --- Devices: OTA, handshake auth, activation ----------------------------------------------------------
# The WebSocket URL handed to devices by the OTA endpoint; empty = derived from the OTA request's host.
XIAOZHI_WEBSOCKET_URL = env_str("XIAOZHI_WEBSOCKET_URL")
# Binary framing (1, 2 or 3) the OTA tells devices to use on the socket.
XIAOZHI_BINARY_PROTOCOL_VERSION = env_int("XIAOZHI_BINARY_PROTOCOL_VERSION", 1, 1, 3)
XIAOZHI_AUTH_ENABLED = env_bool("XIAOZHI_AUTH_ENABLED", False)
XIAOZHI_AUTH_SECRET = env_str("XIAOZHI_AUTH_SECRET", SECRET_KEY)
XIAOZHI_TOKEN_TTL_SECONDS = env_int("XIAOZHI_TOKEN_TTL_SECONDS", 30 * 24 * 3600, 60)
XIAOZHI_ALLOWED_DEVICES = [d.lower().replace("-", ":") for d in env_list("XIAOZHI_ALLOWED_DEVICES")]
XIAOZHI_ACTIVATION_REQUIRED = env_bool("XIAOZHI_ACTIVATION_REQUIRED", False)
XIAOZHI_ACTIVATION_CODE_TTL_SECONDS = env_int("XIAOZHI_ACTIVATION_CODE_TTL_SECONDS", 24 * 3600, 60)
XIAOZHI_ACTIVATION_URL = env_str("XIAOZHI_ACTIVATION_URL", "the admin console")
XIAOZHI_TIMEZONE_OFFSET_MINUTES = env_int("XIAOZHI_TIMEZONE_OFFSET_MINUTES", 0, -720, 840)
# Devices that never activated or never opened a session are deleted once unseen this long
# (`manage.py expire_devices`, run hourly by Celery beat or the in-process scheduler).
XIAOZHI_DEVICE_EXPIRY_SECONDS = env_int("XIAOZHI_DEVICE_EXPIRY_SECONDS", 7 * 24 * 3600, 60)

# --- Voice sessions -------------------------------------------------------------------------------------
XIAOZHI_OUTPUT_SAMPLE_RATE = env_int("XIAOZHI_OUTPUT_SAMPLE_RATE", 24000)
# performance.yaml's server.connection_timeout; the older variable still overrides it.
XIAOZHI_HELLO_TIMEOUT_SECONDS = env_float("XIAOZHI_HELLO_TIMEOUT_SECONDS", PERFORMANCE.server.connection_timeout, 0.1)
XIAOZHI_IDLE_TIMEOUT_SECONDS = env_float("XIAOZHI_IDLE_TIMEOUT_SECONDS", 120.0, 1.0)
XIAOZHI_UNBOUND_SESSION_SECONDS = env_float("XIAOZHI_UNBOUND_SESSION_SECONDS", 180.0, 1.0)
XIAOZHI_VAD_SILENCE_MS = env_int("XIAOZHI_VAD_SILENCE_MS", 500, 100, 5000)
# A pause this long (ms, 0 = off) starts the utterance's ASR speculatively and asks the end-of-turn model
# (XIAOZHI_TURN_PROVIDER: smart_turn, or silence = none) whether the speaker has finished; a turn that sounds
# (probability >= XIAOZHI_END_OF_TURN_THRESHOLD) and reads finished is answered as soon as its transcript is
# ready, anything else at XIAOZHI_VAD_SILENCE_MS with the same transcript (voice/pipeline/speculation.py).
XIAOZHI_VAD_PAUSE_MS = env_int("XIAOZHI_VAD_PAUSE_MS", 200, 0, 5000)
XIAOZHI_TURN_PROVIDER = env_str("XIAOZHI_TURN_PROVIDER", "smart_turn")
XIAOZHI_END_OF_TURN_THRESHOLD = env_float("XIAOZHI_END_OF_TURN_THRESHOLD", 0.5, 0.0)
# On: the model is asked at the pause, beside the speculative ASR (the turn waits for the slower of the two).
# Off (default): only once the transcript is known not to trail off. On 2 cores the bundled Whisper then runs
# slower by the model's CPU time and nothing is gained (benchmarks/README.md); with a hosted ASR, or spare
# cores, on is faster.
XIAOZHI_END_OF_TURN_WITH_ASR = env_bool("XIAOZHI_END_OF_TURN_WITH_ASR", False)
XIAOZHI_VAD_THRESHOLD = env_float("XIAOZHI_VAD_THRESHOLD", 0.5, 0.0)
XIAOZHI_MAX_UTTERANCE_SECONDS = env_float("XIAOZHI_MAX_UTTERANCE_SECONDS", 30.0, 1.0)
# How uplink audio reaches the VAD (voice/workers/vad_batcher.py): "cross_session" scores many sessions'
# chunks in shared model runs (at most XIAOZHI_VAD_MAX_BATCH sessions a run); "session" (one call per
# session batch) and "packet" (one call per packet, the naive baseline) are kept for comparison.
XIAOZHI_VAD_BATCHING = env_choice("XIAOZHI_VAD_BATCHING", "cross_session", ("cross_session", "session", "packet"))
XIAOZHI_VAD_MAX_BATCH = env_int("XIAOZHI_VAD_MAX_BATCH", 64, 1, 1024)
# Listening under load (voice/pipeline/energy_gate.py, voice/workers/vad_batcher.py). The energy gate: a
# decoded packet quieter than MARGIN_DB above the session's running noise floor, or than FLOOR_DBFS, is
# silence without a Silero run (counted in vad_gated_packets). Shedding: a noise-only session's packets that
# waited longer than SHED_AFTER_MS for the VAD are kept undecoded, all but its newest few (vad_shed_packets;
# 0 = never shed); sessions with speech in progress are served first and never shed.
XIAOZHI_VAD_ENERGY_GATE = env_bool("XIAOZHI_VAD_ENERGY_GATE", True)
XIAOZHI_VAD_ENERGY_GATE_MARGIN_DB = env_float("XIAOZHI_VAD_ENERGY_GATE_MARGIN_DB", 6.0, 0.0)
XIAOZHI_VAD_ENERGY_GATE_FLOOR_DBFS = env_float("XIAOZHI_VAD_ENERGY_GATE_FLOOR_DBFS", -55.0, -120.0)
if XIAOZHI_VAD_ENERGY_GATE_FLOOR_DBFS > 0:
    raise ImproperlyConfigured(f"XIAOZHI_VAD_ENERGY_GATE_FLOOR_DBFS must be at most 0, got {XIAOZHI_VAD_ENERGY_GATE_FLOOR_DBFS}")
XIAOZHI_VAD_SHED_AFTER_MS = env_int("XIAOZHI_VAD_SHED_AFTER_MS", 240, 0, 60000)
# A session with speech in progress does not wait for a VAD cycle under way (voice/workers/vad_batcher.py).
XIAOZHI_VAD_HOT_LANE = env_bool("XIAOZHI_VAD_HOT_LANE", True)
# While work a speaking user waits for runs (a hot-lane VAD cycle, the end-of-turn model), the listeners'
# VAD cycle steps aside, at most this long a cycle (0: never; voice/workers/vad_batcher.py).
XIAOZHI_VAD_YIELD_MS = env_int("XIAOZHI_VAD_YIELD_MS", 200, 0, 500)  # well under the VAD timeout (2 s)
# After start-up (models loaded), everything made so far is frozen out of the garbage collector's full
# collections (gc.freeze): they no longer stall the event loop walking it (xiaozhi/asgi.py).
XIAOZHI_GC_FREEZE = env_bool("XIAOZHI_GC_FREEZE", True)
XIAOZHI_HISTORY_TURNS = env_int("XIAOZHI_HISTORY_TURNS", 6, 0, 100)
XIAOZHI_PACER_LEAD_FRAMES = env_int("XIAOZHI_PACER_LEAD_FRAMES", 2, 0, 10)
# No persona name: "You are Xiaozhi" pulled the bundled 135M model into Chinese-flavoured stories on plain
# factual questions (benchmarks/README.md "Tool calling"). An agent config can still set any persona.
XIAOZHI_SYSTEM_PROMPT = env_str(
    "XIAOZHI_SYSTEM_PROMPT",
    "You are a helpful voice assistant. Answer the question directly and correctly, in one short sentence.",
)
# Per-device memory (voice/memory.py): what the user said about themselves, kept between sessions and
# carried by the next session's system prompt. On for devices without an agent config (each agent has
# its own switch); bounded to XIAOZHI_MEMORY_MAX_CHARS; updated at a session's end and every
# XIAOZHI_MEMORY_EVERY_TURNS turns (0: at the end only). "auto" extracts the user's self-statements
# for the bundled SmolLM2 (too small to summarise, see benchmarks/README.md) and asks any other LLM.
XIAOZHI_MEMORY_ENABLED = env_bool("XIAOZHI_MEMORY_ENABLED", True)
XIAOZHI_MEMORY_MAX_CHARS = env_int("XIAOZHI_MEMORY_MAX_CHARS", 500, 50, 4000)
XIAOZHI_MEMORY_EVERY_TURNS = env_int("XIAOZHI_MEMORY_EVERY_TURNS", 10, 0, 1000)
XIAOZHI_MEMORY_METHOD = env_choice("XIAOZHI_MEMORY_METHOD", "auto", ("auto", "llm", "extract"))
# Devices waiting for an update in one process, and how long an update may wait for an idle LLM.
XIAOZHI_MEMORY_QUEUE_SIZE = env_int("XIAOZHI_MEMORY_QUEUE_SIZE", 200, 1, 100000)
XIAOZHI_MEMORY_DEFER_SECONDS = env_float("XIAOZHI_MEMORY_DEFER_SECONDS", 600.0, 1.0)

# --- Tools (voice/tools, voice/mcp) -------------------------------------------------------------------
# Offer tools to the LLM: the device's (over MCP, for devices whose hello has features.mcp) and the server's.
XIAOZHI_TOOLS_ENABLED = env_bool("XIAOZHI_TOOLS_ENABLED", True)
# Also list the tools the firmware keeps for its owner (reboot, firmware upgrade, screen snapshot).
XIAOZHI_MCP_WITH_USER_TOOLS = env_bool("XIAOZHI_MCP_WITH_USER_TOOLS", False)
# LLM rounds that may call tools in one turn; the round after the last one must answer in words.
XIAOZHI_TOOL_MAX_STEPS = env_int("XIAOZHI_TOOL_MAX_STEPS", 3, 1, 10)
# The zone of the server's time tool ("What time is it?"): an IANA name; Django's TIME_ZONE by default.
XIAOZHI_TIME_ZONE = env_time_zone("XIAOZHI_TIME_ZONE", TIME_ZONE)
# A deployment's own server tools: comma-separated dotted paths, each a module with a TOOLS list or one
# ServerTool object (see README "Tools").
XIAOZHI_EXTRA_TOOLS = env_list("XIAOZHI_EXTRA_TOOLS")

# --- Providers (the bundled offline models by default) -----------------------------------------------
XIAOZHI_VAD_PROVIDER = env_str("XIAOZHI_VAD_PROVIDER", "silero")
XIAOZHI_ASR_PROVIDER = env_str("XIAOZHI_ASR_PROVIDER", "whisper")
XIAOZHI_LLM_PROVIDER = env_str("XIAOZHI_LLM_PROVIDER", "smollm2")
XIAOZHI_TTS_PROVIDER = env_str("XIAOZHI_TTS_PROVIDER", "piper")
# For XIAOZHI_ASR_PROVIDER=funasr: a local SenseVoiceSmall folder (config.yaml, model.pt,
# chn_jpn_yue_eng_ko_spectok.bpe.model, optionally am.mvn) and its language hint (auto, zh, en, yue, ja, ko).
XIAOZHI_SENSEVOICE_MODEL_DIR = env_str("XIAOZHI_SENSEVOICE_MODEL_DIR")
XIAOZHI_SENSEVOICE_LANGUAGE = env_str("XIAOZHI_SENSEVOICE_LANGUAGE", "auto")
XIAOZHI_LLM_BASE_URL = env_str("XIAOZHI_LLM_BASE_URL")
XIAOZHI_LLM_API_KEY = env_str("XIAOZHI_LLM_API_KEY")
XIAOZHI_LLM_MODEL = env_str("XIAOZHI_LLM_MODEL")
XIAOZHI_LLM_MAX_TOKENS = env_int("XIAOZHI_LLM_MAX_TOKENS", 80, 8, 4096)
# For openai: attempts after the first before any token (connection errors, 429, 5xx), the first
# retry's delay (doubled each time), and the circuit breaker (fail fast after N failures in a row).
XIAOZHI_LLM_RETRIES = env_int("XIAOZHI_LLM_RETRIES", 2, 0, 10)
XIAOZHI_LLM_RETRY_BACKOFF_SECONDS = env_float("XIAOZHI_LLM_RETRY_BACKOFF_SECONDS", 0.25, 0.0)
XIAOZHI_LLM_BREAKER_FAILURES = env_int("XIAOZHI_LLM_BREAKER_FAILURES", 5, 1, 1000)
XIAOZHI_LLM_BREAKER_COOLDOWN_SECONDS = env_float("XIAOZHI_LLM_BREAKER_COOLDOWN_SECONDS", 30.0, 0.0)
# For XIAOZHI_TTS_PROVIDER=edge (needs outbound HTTPS): the voice when an agent names none, and the
# service's WebSocket URL (blank = edge-tts's own; set it for a relay, or a local fake in tests).
XIAOZHI_EDGE_TTS_VOICE = env_str("XIAOZHI_EDGE_TTS_VOICE", "en-US-AriaNeural")
XIAOZHI_EDGE_TTS_URL = env_str("XIAOZHI_EDGE_TTS_URL")
# For XIAOZHI_ASR_PROVIDER=openai: any OpenAI-compatible POST <base>/audio/transcriptions (hosted
# Whisper, faster-whisper, SenseVoice servers...), its model and an optional language hint (zh, en).
XIAOZHI_ASR_BASE_URL = env_str("XIAOZHI_ASR_BASE_URL")
XIAOZHI_ASR_API_KEY = env_str("XIAOZHI_ASR_API_KEY")
XIAOZHI_ASR_MODEL = env_str("XIAOZHI_ASR_MODEL", "whisper-1")
XIAOZHI_ASR_LANGUAGE = env_str("XIAOZHI_ASR_LANGUAGE")
# For XIAOZHI_TTS_PROVIDER=openai: any OpenAI-compatible POST <base>/audio/speech, its model, the
# voice when an agent names none, the reply format (pcm, wav or mp3; all decoded as they stream) and
# the sample rate of pcm replies (OpenAI's: 24000), which wav and mp3 replies are converted to.
XIAOZHI_TTS_BASE_URL = env_str("XIAOZHI_TTS_BASE_URL")
XIAOZHI_TTS_API_KEY = env_str("XIAOZHI_TTS_API_KEY")
XIAOZHI_TTS_MODEL = env_str("XIAOZHI_TTS_MODEL", "tts-1")
XIAOZHI_TTS_VOICE = env_str("XIAOZHI_TTS_VOICE", "alloy")
XIAOZHI_TTS_FORMAT = env_str("XIAOZHI_TTS_FORMAT", "pcm")
XIAOZHI_TTS_SAMPLE_RATE = env_int("XIAOZHI_TTS_SAMPLE_RATE", 24000, 8000, 48000)
# Their retries and circuit breakers work as the LLM's (above), each with its own breaker; by
# default with the LLM's figures.
XIAOZHI_ASR_RETRIES = env_int("XIAOZHI_ASR_RETRIES", XIAOZHI_LLM_RETRIES, 0, 10)
XIAOZHI_ASR_RETRY_BACKOFF_SECONDS = env_float("XIAOZHI_ASR_RETRY_BACKOFF_SECONDS", XIAOZHI_LLM_RETRY_BACKOFF_SECONDS, 0.0)
XIAOZHI_ASR_BREAKER_FAILURES = env_int("XIAOZHI_ASR_BREAKER_FAILURES", XIAOZHI_LLM_BREAKER_FAILURES, 1, 1000)
XIAOZHI_ASR_BREAKER_COOLDOWN_SECONDS = env_float("XIAOZHI_ASR_BREAKER_COOLDOWN_SECONDS", XIAOZHI_LLM_BREAKER_COOLDOWN_SECONDS, 0.0)
XIAOZHI_TTS_RETRIES = env_int("XIAOZHI_TTS_RETRIES", XIAOZHI_LLM_RETRIES, 0, 10)
XIAOZHI_TTS_RETRY_BACKOFF_SECONDS = env_float("XIAOZHI_TTS_RETRY_BACKOFF_SECONDS", XIAOZHI_LLM_RETRY_BACKOFF_SECONDS, 0.0)
XIAOZHI_TTS_BREAKER_FAILURES = env_int("XIAOZHI_TTS_BREAKER_FAILURES", XIAOZHI_LLM_BREAKER_FAILURES, 1, 1000)
XIAOZHI_TTS_BREAKER_COOLDOWN_SECONDS = env_float("XIAOZHI_TTS_BREAKER_COOLDOWN_SECONDS", XIAOZHI_LLM_BREAKER_COOLDOWN_SECONDS, 0.0)
# Vision (the camera tool's photo questions, voice/vision/): an OpenAI-compatible chat server that takes
# images (hosted APIs, Ollama's vision models, llama.cpp's llama-server with a projector). Blank
# provider = no vision: no device is offered the upload URL, and its camera tool answers by itself.
XIAOZHI_VLLM_PROVIDER = env_str("XIAOZHI_VLLM_PROVIDER")
XIAOZHI_VLLM_BASE_URL = env_str("XIAOZHI_VLLM_BASE_URL")
XIAOZHI_VLLM_API_KEY = env_str("XIAOZHI_VLLM_API_KEY")
XIAOZHI_VLLM_MODEL = env_str("XIAOZHI_VLLM_MODEL")
XIAOZHI_VLLM_MAX_TOKENS = env_int("XIAOZHI_VLLM_MAX_TOKENS", 120, 8, 4096)
XIAOZHI_VLLM_PROMPT = env_str(
    "XIAOZHI_VLLM_PROMPT",
    "You answer questions about a photo taken by a voice assistant's camera. Answer in one to three short "
    "sentences of plain text, to be read aloud.",
)
# The upload URL handed to devices in MCP initialize (capabilities.vision.url); blank = derived from
# XIAOZHI_WEBSOCKET_URL, else from the Host the device's socket came in on.
XIAOZHI_VISION_URL = env_str("XIAOZHI_VISION_URL")
XIAOZHI_VISION_MAX_IMAGE_BYTES = env_int("XIAOZHI_VISION_MAX_IMAGE_BYTES", 2 * 1024 * 1024, 1024)
# Keep each photo in the database beside its question (bounded by the size limit above); off = size only.
XIAOZHI_VISION_KEEP_IMAGES = env_bool("XIAOZHI_VISION_KEEP_IMAGES", False)
XIAOZHI_MODEL_THREADS = env_int("XIAOZHI_MODEL_THREADS", 2, 1, 64)
# Whisper's encoder window: "trimmed" to the utterance (~5x faster on a short turn, same word errors in
# benchmarks/asr_window.py) or the standard 30 s "full" one (voice/providers/asr/whisper.py).
XIAOZHI_WHISPER_WINDOW = env_choice("XIAOZHI_WHISPER_WINDOW", "trimmed", ("trimmed", "full"))
# LLM generation in this process pauses (at most this long per token, 0 = never) while a reply's first
# clause is being synthesised, so the first audio does not share the cores with the rest of the reply.
XIAOZHI_FIRST_AUDIO_HOLD_MS = env_int("XIAOZHI_FIRST_AUDIO_HOLD_MS", 300, 0, 5000)
# A reply's first piece is spoken after this many complete words even without punctuation (0 = wait for it).
XIAOZHI_FIRST_CLAUSE_MAX_WORDS = env_int("XIAOZHI_FIRST_CLAUSE_MAX_WORDS", 6, 0, 100)
# Load and warm every configured model when the server starts (off in most tests, which load lazily).
XIAOZHI_PRELOAD_MODELS = env_bool("XIAOZHI_PRELOAD_MODELS", True)
# --- Monitoring ---------------------------------------------------------------------------------------
# Snapshots every XIAOZHI_MONITORING_SNAPSHOT_SECONDS (Celery beat with Redis; the in-process scheduler
# otherwise), each process publishes its figures to Redis every XIAOZHI_MONITORING_PUBLISH_SECONDS.
XIAOZHI_MONITORING_SNAPSHOT_SECONDS = env_float("XIAOZHI_MONITORING_SNAPSHOT_SECONDS", 60.0, 1.0)
XIAOZHI_MONITORING_PUBLISH_SECONDS = env_float("XIAOZHI_MONITORING_PUBLISH_SECONDS", 10.0, 1.0)
XIAOZHI_MONITORING_RETENTION_DAYS = env_int("XIAOZHI_MONITORING_RETENTION_DAYS", 30, 1)
XIAOZHI_MONITORING_ERROR_WINDOW_SECONDS = env_int("XIAOZHI_MONITORING_ERROR_WINDOW_SECONDS", 300, 10)
XIAOZHI_MONITORING_WEBHOOK_URL = env_str("XIAOZHI_MONITORING_WEBHOOK_URL")
XIAOZHI_MONITORING_WEBHOOK_TIMEOUT_SECONDS = env_float("XIAOZHI_MONITORING_WEBHOOK_TIMEOUT_SECONDS", 3.0, 0.1)
# Bearer token accepted by /metrics and the performance API besides a staff session (empty = staff only).
XIAOZHI_MONITORING_API_TOKEN = env_str("XIAOZHI_MONITORING_API_TOKEN")
# true: /metrics and the read-only /api/performance/* are open to anyone who can reach them (a trusted
# network only: they show host names, pids and the configuration). /health is always open.
XIAOZHI_MONITORING_PUBLIC = env_bool("XIAOZHI_MONITORING_PUBLIC", False)
# "auto": the in-process scheduler runs when asgi.py starts it and Redis is not configured (Celery
# beat does the work then); "on": always (when started); "off": never. Tests never start it.
XIAOZHI_MONITORING_SCHEDULER = env_str("XIAOZHI_MONITORING_SCHEDULER", "auto")
# Redis key prefix under which each process publishes its figures (one expiring key per process).
XIAOZHI_MONITORING_REDIS_PREFIX = env_str("XIAOZHI_MONITORING_REDIS_PREFIX", "xiaozhi:monitoring:proc:")
CELERY_BEAT_SCHEDULE = {
    "monitoring-snapshot": {"task": "monitoring.tasks.snapshot", "schedule": XIAOZHI_MONITORING_SNAPSHOT_SECONDS},
    "monitoring-evaluate": {"task": "monitoring.tasks.evaluate_all", "schedule": XIAOZHI_MONITORING_SNAPSHOT_SECONDS},
    "monitoring-prune": {"task": "monitoring.tasks.prune", "schedule": 3600.0},
    "devices-expire": {"task": "devices.tasks.expire_devices", "schedule": 3600.0},
}

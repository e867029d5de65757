"""The performance configuration: how much work one server process takes on, and its pool sizes.

Four layers, later wins: ``performance.yaml``'s defaults < the machine profile (picked from the
CPU count and memory, or forced with ``XIAOZHI_PERFORMANCE_PROFILE``) < ``data/.performance.yaml``
< ``XIAOZHI_PERF__SECTION__KEY`` environment variables (values parsed as YAML scalars). Every key is
checked against a schema, and every error names the key and the layer its value came from, so a
bad override fails at start-up (``voice/checks.py``) rather than at the first turn.

``load`` is a pure function of paths, environment and machine: ``xiaozhi/settings.py`` calls it
before Django is configured, because the database and Redis pool settings come from here.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICES = ("vad", "asr", "llm", "tts", "vllm")  # vllm: vision (photo questions, devices/vision_views.py)
ENV_PREFIX = "XIAOZHI_PERF__"
PROFILE_ENV = "XIAOZHI_PERFORMANCE_PROFILE"
NO_PROFILE = "defaults"  # XIAOZHI_PERFORMANCE_PROFILE=defaults: use the defaults whatever the machine


class PerformanceConfigError(ValueError):
    pass


# -- the schema ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    kind: type  # int, float or bool
    minimum: float | None = None
    required: bool = True
    why: str = ""  # said after a range error


SERVICE_KEYS = {
    "max_concurrent": Key(int, 1),
    "queue_size": Key(int, 0),
    "enable_queue": Key(bool, required=False),
    "timeout": Key(float, 0.01),
    "first_token_timeout": Key(float, 0.01, required=False),  # from the call's start (not its queue wait)
    "stall_timeout": Key(float, 0.01, required=False),  # longest gap between two items of a stream
    "pool_size": Key(int, 1),
    "per_device": Key(int, 1, required=False),  # calls one device may have in the service; absent = no limit
}
SECTIONS = {
    "server": {"max_connections": Key(int, 1), "connection_timeout": Key(float, 0.1),
               "request_timeout": Key(float, 0.1), "max_header_bytes": Key(int, 1024),
               "max_queued_frames": Key(int, 1), "max_queued_bytes": Key(int, 1024),
               "max_connections_per_address": Key(int, 1)},
    **{f"services.{name}": SERVICE_KEYS for name in SERVICES},
    "database": {"conn_max_age": Key(int, 0), "conn_health_checks": Key(bool), "connect_timeout": Key(int, 1),
                 "query_timeout": Key(int, 1), "pending_writes": Key(int, 1), "session_heartbeat": Key(float, 1)},
    "redis": {
        "max_connections": Key(int, 1),
        "socket_connect_timeout": Key(float, 0.1),
        "socket_timeout": Key(float, 0.1),
        "channel_layer_socket_timeout": Key(float, 6, why="channels-redis blocks up to 5 s on each read"),
    },
    # Optional, so an override file written before tools existed still loads (defaults: McpLimits).
    "mcp": {
        "call_timeout": Key(float, 0.1, required=False),
        "list_timeout": Key(float, 0.1, required=False),
        "max_tools": Key(int, 1, required=False),
        "max_page_bytes": Key(int, 1024, required=False),
        "max_pages": Key(int, 1, required=False),
        "max_pending_calls": Key(int, 1, required=False),
        "max_result_chars": Key(int, 64, required=False),
    },
}
# Rate limits (devices/rate_limits.py): at most ``requests`` in each window of ``seconds`` per key;
# requests: 0 turns one limit off.
RATE_LIMITS = ("ota_per_address", "ota_per_device", "activate_per_address", "activate_per_device",
               "activation_code_failures_per_address", "activation_code_failures_total",
               "handshake_per_address", "handshake_per_device", "admin_login_failures_per_address",
               "vision_per_address", "vision_per_device")
RATE_LIMIT_KEYS = {"requests": Key(int, 0), "seconds": Key(float, 1)}
SECTIONS.update({f"rate_limits.{name}": RATE_LIMIT_KEYS for name in RATE_LIMITS})
PROFILE_KEYS = {"min_cpus": Key(int, 1), "min_memory_gb": Key(float, 0)}


def _schema_key(path: str) -> Key | None:
    section, _, key = path.rpartition(".")
    return SECTIONS.get(section, {}).get(key)


def _check_value(path: str, value, source: str, spec: Key | None = None):
    """The value converted to its kind, or an error naming the key and where the value came from."""
    spec = spec or _schema_key(path)
    if spec is None:
        if path in SECTIONS or path == "services":
            raise PerformanceConfigError(f"{path} must be a mapping, got {value!r} (from {source})")
        raise PerformanceConfigError(f"{path} is not a known key (from {source})")
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise PerformanceConfigError(f"{path} must be true or false, got {value!r} (from {source})")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or (spec.kind is int and not isinstance(value, int)):
        article = "an integer" if spec.kind is int else "a number"
        raise PerformanceConfigError(f"{path} must be {article}, got {value!r} (from {source})")
    if spec.minimum is not None and value < spec.minimum:
        why = f": {spec.why}" if spec.why else ""
        raise PerformanceConfigError(f"{path} must be at least {spec.minimum}, got {value!r} (from {source}){why}")
    return spec.kind(value)


# -- layers ------------------------------------------------------------------------------------------------
def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, required: bool) -> dict:
    if not path.exists():
        if required:
            raise PerformanceConfigError(f"{path} is missing")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PerformanceConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PerformanceConfigError(f"{path} must hold a mapping at the top level")
    return data


def _flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _unflatten(flat: Mapping[str, object]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _layer(data: Mapping, source: str) -> dict[str, object]:
    """A file's or profile's leaves, each checked (known key, right kind, in range)."""
    return {path: _check_value(path, value, source) for path, value in _flatten(data).items()}


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    values, sources = {}, {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = ".".join(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            raise PerformanceConfigError(f"{name}={environ[name]!r} is not a valid value for {path}") from None
        if isinstance(value, dict | list) or value is None:
            raise PerformanceConfigError(f"{name} must be a single value for {path}, got {environ[name]!r}")
        values[path] = _check_value(path, value, f"environment variable {name}")
        sources[path] = f"env {name}"
    return values, sources


# -- the machine and its profile ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_gb: float

    @classmethod
    def detect(cls) -> Machine:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            memory = 0.0
        return cls(cpus=os.cpu_count() or 1, memory_gb=round(memory, 1))


def _profiles(raw) -> dict[str, tuple[int, float, dict]]:
    """name -> (min_cpus, min_memory_gb, overrides), every profile checked even when not chosen."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PerformanceConfigError("profiles must be a mapping of profile name to overrides")
    out = {}
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise PerformanceConfigError(f"profiles.{name} must be a mapping")
        body = dict(body)
        needs = {}
        for key, spec in PROFILE_KEYS.items():
            if key not in body:
                raise PerformanceConfigError(f"profiles.{name}.{key} is required")
            needs[key] = _check_value(f"profiles.{name}.{key}", body.pop(key), f"profile {name}", spec)
        body.pop("description", None)
        out[str(name)] = (needs["min_cpus"], needs["min_memory_gb"], _layer(body, f"profile {name}"))
    return out


def choose_profile(profiles: Mapping[str, tuple], machine: Machine, forced: str = "") -> str | None:
    """The forced profile, else the largest the machine satisfies; None = the defaults alone."""
    forced = forced.strip()
    if forced:
        if forced == NO_PROFILE:
            return None
        if forced not in profiles:
            raise PerformanceConfigError(
                f"{PROFILE_ENV}={forced!r} is not a profile; known: {', '.join([*profiles, NO_PROFILE])}")
        return forced
    fitting = [(cpus, memory, name) for name, (cpus, memory, _) in profiles.items()
               if machine.cpus >= cpus and machine.memory_gb >= memory]
    return max(fitting)[2] if fitting else None


# -- the typed result ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceLimits:
    """One voice service's limits. ``queue_size`` is the number of calls admitted to wait: 0 when
    ``enable_queue`` is false (refused as soon as every slot is busy), whatever the file says."""

    name: str
    max_concurrent: int
    queue_size: int
    timeout: float
    pool_size: int
    first_token_timeout: float | None = None  # a stream's first item, counted from the call's start
    stall_timeout: float | None = None  # a stream's longest silence between two items
    enable_queue: bool = True
    per_device: int | None = None  # calls one device may have in the service at once; None = no limit


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int  # sockets per process; the next is refused with 4503
    connection_timeout: float  # seconds from the socket's arrival to its hello
    # The transport (xiaozhi/server.py), below Channels:
    request_timeout: float  # seconds for a whole HTTP request (head and body) to arrive, else 408 and close
    max_header_bytes: int  # request line and headers; more is answered 431 and closed
    max_queued_frames: int  # WebSocket frames waiting for the application, per connection, before the
    max_queued_bytes: int  # socket is no longer read (TCP slows the sender) until half have been taken
    max_connections_per_address: int  # sockets per client address per process; the next is refused with 4429


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` per window of ``seconds`` for one key (an address, a device); 0 = no limit."""

    requests: int
    seconds: float

    @property
    def enabled(self) -> bool:
        return self.requests > 0


@dataclass(frozen=True)
class DatabasePool:
    conn_max_age: int
    conn_health_checks: bool
    connect_timeout: int
    query_timeout: int  # seconds mysqlclient waits on a read or a write (it retries a read twice more)
    pending_writes: int  # records kept for a retry while the database is unreachable (devices/pending_writes.py)
    session_heartbeat: float  # seconds between a process's heartbeats on its session rows (devices/session_owner.py)


@dataclass(frozen=True)
class RedisPool:
    max_connections: int
    socket_connect_timeout: float
    socket_timeout: float
    channel_layer_socket_timeout: float


@dataclass(frozen=True)
class McpLimits:
    """Bounds of one device's MCP client (voice/mcp): the device is untrusted input."""

    call_timeout: float = 30.0  # seconds a tools/call may take (the firmware runs tools on its main task)
    list_timeout: float = 10.0  # seconds for the initialize reply and for each tools/list page
    max_tools: int = 32  # tools kept per device; the rest are dropped with a warning
    max_page_bytes: int = 16384  # a tools/list reply larger than this is refused (the firmware pages at ~8 KB)
    max_pages: int = 8  # tools/list pages followed before giving up on nextCursor
    max_pending_calls: int = 4  # tools/call requests in flight per device; more fail at once
    max_result_chars: int = 2000  # characters of a tool's result handed to the LLM


@dataclass(frozen=True)
class PerformanceConfig:
    profile: str | None
    machine: Machine
    values: dict  # the merged configuration, nested as in the file
    sources: dict[str, str]  # dotted key -> layer its value came from
    server: ServerLimits
    services: dict[str, ServiceLimits]
    database: DatabasePool
    redis: RedisPool
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    profiles: tuple[str, ...] = field(default=())
    mcp: McpLimits = field(default_factory=McpLimits)

    def as_dict(self) -> dict:
        return {"profile": self.profile or NO_PROFILE, "profiles": list(self.profiles),
                "machine": {"cpus": self.machine.cpus, "memory_gb": self.machine.memory_gb},
                "values": self.values, "sources": self.sources}


def _require(flat: Mapping[str, object], sections) -> None:
    for section in sections:
        for key, spec in SECTIONS[section].items():
            if spec.required and f"{section}.{key}" not in flat:
                raise PerformanceConfigError(f"{section}.{key} is required (set it in performance.yaml)")


def _section(flat: Mapping[str, object], name: str) -> dict:
    prefix = name + "."
    return {path[len(prefix):]: value for path, value in flat.items() if path.startswith(prefix)}


def _services(flat: Mapping[str, object], sources: Mapping[str, str]) -> dict[str, ServiceLimits]:
    services = {}
    for name in SERVICES:
        raw = _section(flat, f"services.{name}")
        first = raw.get("first_token_timeout")
        if first is not None and first > raw["timeout"]:
            where = sources.get(f"services.{name}.first_token_timeout", "configuration")
            raise PerformanceConfigError(f"services.{name}.first_token_timeout ({first}) must not exceed "
                                         f"services.{name}.timeout ({raw['timeout']}) (from {where})")
        enabled = raw.get("enable_queue", True)
        services[name] = ServiceLimits(name=name, max_concurrent=raw["max_concurrent"],
                                       queue_size=raw["queue_size"] if enabled else 0, timeout=raw["timeout"],
                                       pool_size=raw["pool_size"], first_token_timeout=first, enable_queue=enabled,
                                       stall_timeout=raw.get("stall_timeout"),
                                       per_device=raw.get("per_device"))
    return services


def load(defaults_path, overrides_path=None, environ: Mapping[str, str] | None = None,
         machine: Machine | None = None) -> PerformanceConfig:
    """Merge and check the four layers. Pure: no Django, no global state."""
    environ = os.environ if environ is None else environ
    machine = machine or Machine.detect()
    base = _read_yaml(Path(defaults_path), required=True)
    override = _read_yaml(Path(overrides_path), required=False) if overrides_path else {}
    override_name = Path(overrides_path).name if overrides_path else ""
    profiles = _profiles(deep_merge(base.get("profiles") or {}, override.get("profiles") or {}))
    profile = choose_profile(profiles, machine, environ.get(PROFILE_ENV, ""))

    flat: dict[str, object] = {}
    sources: dict[str, str] = {}
    layers = [(_layer({k: v for k, v in base.items() if k != "profiles"}, Path(defaults_path).name),
               Path(defaults_path).name)]
    if profile:
        layers.append((profiles[profile][2], f"profile {profile}"))
    layers.append((_layer({k: v for k, v in override.items() if k != "profiles"}, override_name), override_name))
    env_values, env_sources = _env_layer(environ)
    for values, source in layers:
        flat.update(values)
        sources.update(dict.fromkeys(values, source))
    flat.update(env_values)
    sources.update(env_sources)
    _require(flat, SECTIONS)
    services = _services(flat, sources)
    ordered = sorted(flat, key=_order)
    return PerformanceConfig(profile=profile, machine=machine, values=_unflatten({k: flat[k] for k in ordered}),
                             sources={k: sources[k] for k in ordered}, server=ServerLimits(**_section(flat, "server")),
                             services=services, database=DatabasePool(**_section(flat, "database")),
                             redis=RedisPool(**_section(flat, "redis")),
                             rate_limits={name: RateLimit(**_section(flat, f"rate_limits.{name}")) for name in RATE_LIMITS},
                             profiles=tuple(profiles), mcp=McpLimits(**_section(flat, "mcp")))


def _order(path: str) -> tuple:
    """Sections and keys in the schema's order, for a stable printed configuration."""
    section, _, key = path.rpartition(".")
    names = list(SECTIONS)
    keys = list(SECTIONS.get(section, {}))
    return (names.index(section) if section in names else len(names), keys.index(key) if key in keys else len(keys))


def parse_limits(data: dict) -> dict[str, ServiceLimits]:
    """The service limits of one already merged mapping (its ``services`` only), checked."""
    if not isinstance(data.get("services"), dict):
        raise PerformanceConfigError(f"services must be a mapping with {', '.join(SERVICES)}")
    flat = _layer({"services": data["services"]}, "configuration")
    _require(flat, [f"services.{name}" for name in SERVICES])
    return _services(flat, {})


# -- this process's configuration ----------------------------------------------------------------------------
@functools.cache
def performance_config() -> PerformanceConfig:
    """The configuration this process runs with (files named by the settings, the real environment)."""
    from django.conf import settings

    return load(settings.XIAOZHI_PERFORMANCE_FILE, settings.XIAOZHI_PERFORMANCE_OVERRIDES, os.environ)


def performance_limits() -> dict[str, ServiceLimits]:
    return performance_config().services


performance_limits.cache_clear = performance_config.cache_clear  # older callers clear through this name


def service_limits(name: str) -> ServiceLimits:
    return performance_config().services[name]


def mcp_limits() -> McpLimits:
    return performance_config().mcp


def effective_config() -> dict:
    """Profile, machine, merged values and each value's source: for the monitoring API and admins."""
    return performance_config().as_dict()

"""Typed voice-service limits: ``performance.yaml`` deep-merged with ``data/.performance.yaml``.

Read once per process and validated; errors name the offending key so a bad override fails at
start-up (see ``voice/checks.py``) rather than at the first turn.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml
from django.conf import settings

SERVICES = ("vad", "asr", "llm", "tts")


class PerformanceConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServiceLimits:
    name: str
    max_concurrent: int
    queue_size: int
    timeout: float
    pool_size: int
    first_token_timeout: float | None = None


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


def _number(raw: dict, service: str, key: str, kind, minimum, required=True):
    value = raw.get(key)
    where = f"services.{service}.{key}"
    if value is None:
        if required:
            raise PerformanceConfigError(f"{where} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise PerformanceConfigError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value < minimum:
        raise PerformanceConfigError(f"{where} must be at least {minimum}, got {value!r}")
    return kind(value)


def parse_limits(data: dict) -> dict[str, ServiceLimits]:
    services = data.get("services")
    if not isinstance(services, dict):
        raise PerformanceConfigError("services must be a mapping with vad, asr, llm and tts")
    limits = {}
    for name in SERVICES:
        raw = services.get(name)
        if not isinstance(raw, dict):
            raise PerformanceConfigError(f"services.{name} is missing")
        limits[name] = ServiceLimits(
            name=name,
            max_concurrent=_number(raw, name, "max_concurrent", int, 1),
            queue_size=_number(raw, name, "queue_size", int, 0),
            timeout=_number(raw, name, "timeout", float, 0.01),
            pool_size=_number(raw, name, "pool_size", int, 1),
            first_token_timeout=_number(raw, name, "first_token_timeout", float, 0.01, required=False),
        )
    return limits


@functools.cache
def performance_limits() -> dict[str, ServiceLimits]:
    base = _read_yaml(Path(settings.XIAOZHI_PERFORMANCE_FILE), required=True)
    override = _read_yaml(Path(settings.XIAOZHI_PERFORMANCE_OVERRIDES), required=False)
    return parse_limits(deep_merge(base, override))


def service_limits(name: str) -> ServiceLimits:
    return performance_limits()[name]

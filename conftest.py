"""Shared test fixtures. With DATABASE_URL / REDIS_URL set (as in CI) every test runs on MySQL and
Redis; an unreachable Redis is an error here, never a skip."""
import os

import pytest


def pytest_configure(config):
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        import redis

        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
        except Exception as exc:  # noqa: BLE001
            raise pytest.UsageError(f"REDIS_URL={redis_url} is set but Redis does not answer: {exc}") from exc

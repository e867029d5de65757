"""performance.yaml's layers: defaults < machine profile < data/.performance.yaml < XIAOZHI_PERF__* variables.

The loader runs on the shipped performance.yaml (the file operators edit), so a change there that
breaks a profile or the precedence fails here.
"""
from __future__ import annotations

import io
import os

import pytest
import yaml
from django.conf import settings as django_settings
from django.core.management import call_command

from voice.conf import Machine, PerformanceConfigError, choose_profile, load, performance_config

SHIPPED = django_settings.BASE_DIR / "performance.yaml"
SMALL, TWO, FOUR, EIGHT, HUGE = Machine(1, 2.0), Machine(2, 3.8), Machine(4, 7.7), Machine(8, 15.6), Machine(64, 256.0)


def shipped(machine, environ=None, overrides=None):
    return load(SHIPPED, overrides, environ or {}, machine)


def test_the_profile_is_the_largest_the_machine_satisfies():
    assert shipped(SMALL).profile is None
    assert shipped(TWO).profile == "2c4g"
    assert shipped(FOUR).profile == "4c8g"
    assert shipped(EIGHT).profile == "8c16g"
    assert shipped(HUGE).profile == "8c16g"
    assert shipped(Machine(8, 6.0)).profile == "2c4g"  # many cores, little memory: memory decides


def test_bigger_machines_get_more_concurrency_pools_and_connections():
    small, two, four, eight = (shipped(m) for m in (SMALL, TWO, FOUR, EIGHT))
    for key in ("max_concurrent", "pool_size"):
        values = [getattr(c.services["asr"], key) for c in (small, two, four, eight)]
        assert values == sorted(values) and values[-1] > values[0]
    connections = [c.server.max_connections for c in (small, two, four, eight)]
    assert connections == sorted(connections) and len(set(connections)) == 4
    assert [c.redis.max_connections for c in (small, two, four, eight)] == connections
    assert eight.services["asr"].max_concurrent == EIGHT.cpus // 2  # Whisper: 2 threads per call


def test_a_profile_overrides_only_what_it_names_and_says_so():
    config = shipped(FOUR)
    assert config.sources["services.asr.max_concurrent"] == "profile 4c8g"
    assert config.sources["services.asr.timeout"] == "performance.yaml"
    assert config.services["asr"].timeout == shipped(SMALL).services["asr"].timeout


def test_precedence_defaults_profile_file_environment(tmp_path):
    override = tmp_path / ".performance.yaml"
    override.write_text("services:\n  asr:\n    max_concurrent: 3\n    queue_size: 5\n")
    environ = {"XIAOZHI_PERF__SERVICES__ASR__MAX_CONCURRENT": "7", "XIAOZHI_PERFORMANCE_PROFILE": "8c16g"}
    config = shipped(SMALL, environ, override)
    asr = config.services["asr"]
    assert config.profile == "8c16g"  # forced on a machine too small for it
    assert (asr.max_concurrent, asr.queue_size, asr.pool_size) == (7, 5, 4)
    assert config.sources["services.asr.max_concurrent"] == "env XIAOZHI_PERF__SERVICES__ASR__MAX_CONCURRENT"
    assert config.sources["services.asr.queue_size"] == ".performance.yaml"
    assert config.sources["services.asr.pool_size"] == "profile 8c16g"
    assert shipped(EIGHT, {"XIAOZHI_PERFORMANCE_PROFILE": "defaults"}).profile is None


def test_environment_values_are_yaml_scalars():
    config = shipped(TWO, {"XIAOZHI_PERF__SERVICES__TTS__ENABLE_QUEUE": "false",
                           "XIAOZHI_PERF__SERVER__CONNECTION_TIMEOUT": "2.5",
                           "XIAOZHI_PERF__DATABASE__CONN_HEALTH_CHECKS": "no"})
    assert config.server.connection_timeout == 2.5 and config.database.conn_health_checks is False
    tts = config.services["tts"]
    assert tts.enable_queue is False and tts.queue_size == 0  # refuse as soon as every slot is busy
    assert config.values["services"]["tts"]["queue_size"] > 0  # the configured figure is still shown


@pytest.mark.parametrize("environ,message", [
    ({"XIAOZHI_PERF__SERVICES__ASR__MAX_CONCURRENT": "two"},
     "services.asr.max_concurrent must be an integer, got 'two' (from environment variable XIAOZHI_PERF__SERVICES__ASR__MAX_CONCURRENT)"),
    ({"XIAOZHI_PERF__SERVER__MAX_CONECTIONS": "5"}, "server.max_conections is not a known key"),
    ({"XIAOZHI_PERF__SERVICES__WHISPER__TIMEOUT": "5"}, "services.whisper.timeout is not a known key"),
    ({"XIAOZHI_PERF__SERVER__MAX_CONNECTIONS": "0"}, "server.max_connections must be at least 1"),
    ({"XIAOZHI_PERF__SERVICES__ASR__ENABLE_QUEUE": "maybe"}, "services.asr.enable_queue must be true or false"),
    ({"XIAOZHI_PERF__REDIS__CHANNEL_LAYER_SOCKET_TIMEOUT": "5"}, "channels-redis blocks up to 5 s"),
    ({"XIAOZHI_PERF__SERVICES__LLM__FIRST_TOKEN_TIMEOUT": "60"}, "services.llm.first_token_timeout (60.0) must not exceed"),
    ({"XIAOZHI_PERF__SERVER": "{max_connections: 3}"}, "XIAOZHI_PERF__SERVER must be a single value"),
    ({"XIAOZHI_PERFORMANCE_PROFILE": "16c64g"}, "XIAOZHI_PERFORMANCE_PROFILE='16c64g' is not a profile; known: 2c4g, 4c8g, 8c16g, defaults"),
])
def test_a_bad_environment_variable_is_named(environ, message):
    with pytest.raises(PerformanceConfigError) as info:
        shipped(TWO, environ)
    assert message in str(info.value)


@pytest.mark.parametrize("text,message", [
    ("services:\n  asr:\n    max_concurrent: zero\n", "services.asr.max_concurrent must be an integer, got 'zero' (from .performance.yaml)"),
    ("services:\n  asr: 3\n", "services.asr must be a mapping"),
    ("server:\n  max_conections: 3\n", "server.max_conections is not a known key (from .performance.yaml)"),
    ("profiles:\n  4c8g:\n    services:\n      asr:\n        pool_size: -1\n", "services.asr.pool_size must be at least 1, got -1 (from profile 4c8g)"),
    ("profiles:\n  tiny:\n    server:\n      max_connections: 5\n", "profiles.tiny.min_cpus is required"),
    ("- just a list\n", "must hold a mapping at the top level"),
    ("server: [\n", "is not valid YAML"),
])
def test_a_bad_override_file_is_named(tmp_path, text, message):
    override = tmp_path / ".performance.yaml"
    override.write_text(text)
    with pytest.raises(PerformanceConfigError) as info:
        shipped(TWO, overrides=override)
    assert message in str(info.value)


def test_a_missing_required_key_is_named(tmp_path):
    base = yaml.safe_load(SHIPPED.read_text())
    del base["services"]["llm"]["timeout"]
    path = tmp_path / "performance.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(PerformanceConfigError, match="services.llm.timeout is required"):
        load(path, None, {}, TWO)


def test_the_override_file_can_tune_a_profile(tmp_path):
    override = tmp_path / ".performance.yaml"
    override.write_text("profiles:\n  4c8g:\n    server:\n      max_connections: 321\n")
    config = shipped(FOUR, overrides=override)
    assert config.server.max_connections == 321 and config.sources["server.max_connections"] == "profile 4c8g"


def test_choose_profile_without_profiles():
    assert choose_profile({}, HUGE) is None


def test_settings_carry_the_pools_into_django():
    """settings.py loads the same configuration before Django is set up and wires its pools."""
    config = django_settings.PERFORMANCE
    assert config.profile == load(SHIPPED, django_settings.XIAOZHI_PERFORMANCE_OVERRIDES, dict(os.environ)).profile
    assert django_settings.XIAOZHI_HELLO_TIMEOUT_SECONDS > 0


def test_database_and_redis_values_reach_their_clients():
    from xiaozhi.env import database_from_url

    config = shipped(TWO, {"XIAOZHI_PERF__DATABASE__CONN_MAX_AGE": "0", "XIAOZHI_PERF__DATABASE__CONNECT_TIMEOUT": "3",
                           "XIAOZHI_PERF__DATABASE__QUERY_TIMEOUT": "7"})
    entry = database_from_url("mysql://u:p@db:3306/x", config.database.conn_max_age, config.database.conn_health_checks,
                              config.database.connect_timeout, config.database.query_timeout)
    assert entry["CONN_MAX_AGE"] == 0 and entry["CONN_HEALTH_CHECKS"] is True and entry["OPTIONS"]["connect_timeout"] == 3
    assert entry["OPTIONS"]["read_timeout"] == entry["OPTIONS"]["write_timeout"] == 7  # mysqlclient's names
    assert database_from_url("mysql://u@db/x?connect_timeout=9", connect_timeout=3)["OPTIONS"]["connect_timeout"] == "9"


def test_the_redis_pools_take_the_configured_size():
    """The option names are the clients' own: channels-redis passes the host dict to redis-py's pool."""
    from channels_redis.utils import create_pool
    from django_redis.pool import ConnectionFactory

    config = shipped(FOUR)
    host = {"address": "redis://127.0.0.1:6379/5", "max_connections": config.redis.max_connections,
            "socket_timeout": config.redis.channel_layer_socket_timeout}
    pool = create_pool(host)
    assert pool.max_connections == 400 and pool.connection_kwargs["socket_timeout"] == 30.0
    factory = ConnectionFactory({"CONNECTION_POOL_KWARGS": {"max_connections": config.redis.max_connections},
                                 "SOCKET_TIMEOUT": config.redis.socket_timeout})
    sync_pool = factory.get_connection_pool(factory.make_connection_params("redis://127.0.0.1:6379/5"))
    assert sync_pool.max_connections == 400 and sync_pool.connection_kwargs["socket_timeout"] == 5.0


# -- the process's configuration, the command and the monitoring view -------------------------------------------
@pytest.fixture
def fresh_config():
    performance_config.cache_clear()
    yield
    performance_config.cache_clear()


def test_the_command_prints_loadable_yaml_with_sources(fresh_config, settings, tmp_path, monkeypatch):
    override = tmp_path / ".performance.yaml"
    override.write_text("services:\n  llm:\n    queue_size: 3\n")
    settings.XIAOZHI_PERFORMANCE_OVERRIDES = str(override)
    monkeypatch.setenv("XIAOZHI_PERF__SERVER__MAX_CONNECTIONS", "42")
    monkeypatch.setenv("XIAOZHI_PERFORMANCE_PROFILE", "4c8g")
    out = io.StringIO()
    call_command("performance_config", stdout=out)
    text = out.getvalue()
    assert yaml.safe_load(text) == performance_config().values  # paste-able into data/.performance.yaml
    assert "# profile: 4c8g" in text
    assert "server:\n  max_connections: 42  # env XIAOZHI_PERF__SERVER__MAX_CONNECTIONS\n" in text
    assert "  llm:\n    max_concurrent: 12  # profile 4c8g\n    queue_size: 3  # .performance.yaml\n" in text


def test_the_command_reports_an_error_and_fails(fresh_config, monkeypatch):
    from django.core.management import CommandError

    monkeypatch.setenv("XIAOZHI_PERF__SERVICES__ASR__TIMEOUT", "soon")
    with pytest.raises(CommandError, match="services.asr.timeout must be a number"):
        call_command("performance_config", stdout=io.StringIO())


@pytest.mark.django_db
def test_the_concurrency_endpoint_shows_the_effective_configuration(fresh_config, admin_client, monkeypatch):
    monkeypatch.setenv("XIAOZHI_PERFORMANCE_PROFILE", "8c16g")
    data = admin_client.get("/api/performance/concurrency/").json()  # staff only (or the monitoring token)
    config = data["configuration"]
    assert config["profile"] == "8c16g" and config["values"]["services"]["asr"]["max_concurrent"] == 4
    assert config["sources"]["services.asr.max_concurrent"] == "profile 8c16g"
    assert set(config["machine"]) == {"cpus", "memory_gb"}


def test_settings_take_the_hello_timeout_from_server_connection_timeout():
    """settings.py runs once per process: check it in a fresh one, with the variable set."""
    import subprocess
    import sys

    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.XIAOZHI_HELLO_TIMEOUT_SECONDS, s.PERFORMANCE.server.connection_timeout)")
    env = {k: v for k, v in os.environ.items() if k != "XIAOZHI_HELLO_TIMEOUT_SECONDS"}
    env.update(DJANGO_SETTINGS_MODULE="xiaozhi.settings", XIAOZHI_PERF__SERVER__CONNECTION_TIMEOUT="4.5")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=django_settings.BASE_DIR, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["4.5", "4.5"]
    env["XIAOZHI_PERF__SERVER__CONNECTION_TIMEOUT"] = "-1"
    failed = subprocess.run([sys.executable, "-c", code], env=env, cwd=django_settings.BASE_DIR, capture_output=True,
                            text=True)
    assert failed.returncode != 0
    assert "server.connection_timeout must be at least 0.1, got -1 (from environment variable " \
           "XIAOZHI_PERF__SERVER__CONNECTION_TIMEOUT)" in failed.stderr

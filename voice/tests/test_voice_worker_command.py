"""``manage.py voice_worker``: one Celery worker process per voice service, sized by performance.yaml."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from voice.conf import ServiceLimits, service_limits
from voice.management.commands.voice_worker import worker_argv
from voice.workers import heartbeat

ROOT = Path(__file__).resolve().parents[2]


def option(argv, name):
    return argv[argv.index(name) + 1]


def test_each_service_gets_its_own_queue_and_its_max_concurrent_as_concurrency(settings):
    settings.XIAOZHI_WORKER_QUEUE_PREFIX = "voice"
    for service in ("asr", "llm", "tts"):
        argv = worker_argv(service)
        assert option(argv, "-Q") == f"voice.{service}"
        assert option(argv, "--pool") == "threads"
        assert option(argv, "--concurrency") == str(service_limits(service).max_concurrent)
        assert option(argv, "-n") == f"voice-{service}@%h"


def test_an_explicit_concurrency_and_extra_modules_are_passed_on():
    argv = worker_argv("tts", concurrency=3, include=["voice.tests.probe_operations"], quiet_cluster=True)
    assert option(argv, "--concurrency") == "3" and option(argv, "-I") == "voice.tests.probe_operations"
    assert "--without-mingle" in argv


def test_without_redis_it_refuses_and_names_the_setting(settings):
    settings.CELERY_BROKER_URL = "memory://"
    with pytest.raises(CommandError, match="REDIS_URL"):
        call_command("voice_worker", "asr")


def test_concurrency_is_refused_for_several_services(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    with pytest.raises(CommandError, match="one service"):
        call_command("voice_worker", "asr", "tts", "--concurrency", "2")


@pytest.mark.models
async def test_a_tts_worker_started_by_the_command_speaks_through_the_celery_backend(settings, tmp_path):
    """The production path: the command starts a real worker that loads Piper, takes calls from its
    own queue and streams Opus frames back over the channel layer."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (CI always sets it)")
    from voice.audio.opus import OpusDecoder
    from voice.workers import make_service

    prefix = f"cmd-{uuid.uuid4().hex[:8]}"
    settings.XIAOZHI_WORKER_QUEUE_PREFIX = prefix
    log_path = tmp_path / "worker.log"
    env = dict(os.environ, XIAOZHI_WORKER_QUEUE_PREFIX=prefix, XIAOZHI_MONITORING_SCHEDULER="off")
    with open(log_path, "w+") as log:
        worker = subprocess.Popen([sys.executable, "manage.py", "voice_worker", "tts", "--quiet-cluster"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "ready." not in log_path.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            text = log_path.read_text()
            assert f"{prefix}.tts" in text and f"concurrency: {service_limits('tts').max_concurrent} (thread)" in text
            assert "voice worker ready: tts" in text  # it loaded its own model, and only that one
            workers = heartbeat.live_workers()  # what /health reports under Celery
            assert [(w["pid"], w["models"]["tts"]) for w in workers["tts"]] == [(worker.pid, ["piper"])]
            assert workers["asr"] == [] and workers["llm"] == []

            tts = make_service(ServiceLimits("tts", 1, 2, 30.0, pool_size=1), backend="celery")
            frames = [f async for chunk in tts.stream("tts_frames", "piper", "Hello from the worker.", None, 24000)
                      for f in chunk]
            assert len(frames) >= 10  # 60 ms each: more than half a second of speech
            decoder = OpusDecoder(24000)
            pcm = np.concatenate([decoder.decode(f) for f in frames])
            assert decoder.errors == 0 and len(pcm) >= 10 * 1440 and np.abs(pcm).max() > 1000  # speech, not silence
        finally:
            worker.terminate()
            worker.wait(30)
    assert worker.returncode == 0, log_path.read_text()[-3000:]


@pytest.mark.models
def test_a_killed_worker_is_withdrawn_at_once_and_started_again_while_the_others_carry_on(settings, tmp_path):
    """A killed LLM worker used to take the ASR and TTS workers down with it, nothing started them
    again, and /health called the dead one live for the heartbeat's 30 s."""
    import signal

    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (CI always sets it)")
    prefix = f"sup-{uuid.uuid4().hex[:8]}"
    settings.XIAOZHI_WORKER_QUEUE_PREFIX = prefix
    env = dict(os.environ, XIAOZHI_WORKER_QUEUE_PREFIX=prefix, XIAOZHI_MONITORING_SCHEDULER="off")

    def live(service):
        return [w["pid"] for w in heartbeat.live_workers()[service]]

    def wait_for(condition, limit):
        deadline = time.monotonic() + limit
        while not condition():
            assert supervisor.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)

    log_path = tmp_path / "workers.log"
    with open(log_path, "w+") as log:
        supervisor = subprocess.Popen([sys.executable, "manage.py", "voice_worker", "tts", "asr", "--quiet-cluster"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: live("tts") and live("asr"), 180)
            [killed], [asr] = live("tts"), live("asr")
            os.kill(killed, signal.SIGKILL)
            wait_for(lambda: killed not in live("tts"), 5)  # withdrawn by the supervisor, not by the TTL
            wait_for(lambda: live("tts"), 120)  # and started again
            assert live("tts") != [killed]
            assert live("asr") == [asr]  # the other service never stopped
        finally:
            supervisor.terminate()
            supervisor.wait(60)
    assert heartbeat.live_workers()["tts"] == [] and heartbeat.live_workers()["asr"] == []

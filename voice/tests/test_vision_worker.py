"""The ``vllm`` service under Celery: ``manage.py voice_worker vllm`` starts a real worker on its
own queue, which answers ``describe_image`` with the vision provider (a local OpenAI-compatible
server at the remote boundary) and shows in the heartbeats ``/health`` reads."""
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from loadtest.camera import photo_jpeg
from loadtest.fake_vision import FakeVisionServer, answer_for
from voice.conf import ServiceLimits
from voice.workers import ServiceBusy, heartbeat, make_service

ROOT = Path(__file__).resolve().parents[2]


async def test_a_vision_worker_started_by_the_command_answers_a_photo_question(settings, tmp_path):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (CI always sets it)")
    prefix = f"vision-{uuid.uuid4().hex[:8]}"
    settings.XIAOZHI_WORKER_QUEUE_PREFIX = prefix
    log_path = tmp_path / "worker.log"
    jpeg = photo_jpeg()
    with FakeVisionServer() as vision, open(log_path, "w+") as log:
        env = dict(os.environ, XIAOZHI_WORKER_QUEUE_PREFIX=prefix, XIAOZHI_MONITORING_SCHEDULER="off",
                   XIAOZHI_VLLM_PROVIDER="openai", XIAOZHI_VLLM_BASE_URL=vision.url, XIAOZHI_VLLM_MODEL="fake-vision")
        worker = subprocess.Popen([sys.executable, "manage.py", "voice_worker", "vllm", "--quiet-cluster"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "ready." not in log_path.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            assert f"{prefix}.vllm" in log_path.read_text()
            deadline = time.monotonic() + 30
            while not heartbeat.live_workers().get("vllm"):
                assert time.monotonic() < deadline, "the vision worker never announced itself"
                time.sleep(0.2)
            [record] = heartbeat.live_workers()["vllm"]
            assert record["pid"] == worker.pid and record["models"]["vllm"] == ["openai"]

            service = make_service(ServiceLimits("vllm", 1, 0, 30.0, pool_size=1), backend="celery")
            answer = await service.call("describe_image", "openai", "What do you see?", jpeg, "image/jpeg", None,
                                        owner="aa:bb:cc:00:00:01")
            [seen] = vision.seen
            assert answer == answer_for(seen) and (seen.image_bytes, seen.model) == (len(jpeg), "fake-vision")
            vision.hold()  # one slot, no queue: a second photo while the first is looked at is refused at once
            first = asyncio.ensure_future(service.call("describe_image", "openai", "And now?", jpeg, "image/jpeg",
                                                       None, owner="aa:bb:cc:00:00:01"))
            while len(vision.seen) < 2:
                await asyncio.sleep(0.05)
            with pytest.raises(ServiceBusy):
                await service.call("describe_image", "openai", "Busy?", jpeg, "image/jpeg", None, owner="aa:bb:cc:00:00:02")
            vision.release()
            assert "And now?" in await first
            assert service.occupancy()["completed"] == 2 and service.occupancy()["rejected"] == 1
            service.shutdown()
        finally:
            vision.release()
            worker.terminate()
            worker.wait(30)
    assert worker.returncode == 0, log_path.read_text()[-3000:]

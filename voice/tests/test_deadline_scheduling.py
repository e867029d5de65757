"""Waiting model calls run earliest deadline first (in-process backend), and a turn's TTS deadline is
when its device's playout runs dry."""
import asyncio
import threading
import time

import pytest

from voice.conf import ServiceLimits
from voice.pipeline.pacer import Pacer
from voice.tests import probe_operations  # noqa: F401 - registers the probe operations
from voice.workers import ServiceTimeout
from voice.workers.deadline_executor import DeadlineExecutor
from voice.workers.local import LocalService


def test_waiting_calls_run_by_deadline_and_calls_without_one_in_arrival_order():
    executor = DeadlineExecutor(1, "test")
    gate, ran = threading.Event(), []
    blocker = executor.submit(gate.wait, 5)
    time.sleep(0.05)  # the only thread is now busy
    base = time.monotonic()
    futures = [
        executor.submit(ran.append, "in 5 s", deadline=base + 5),
        executor.submit(ran.append, "in 1 s", deadline=base + 1),
        executor.submit(ran.append, "no deadline (due now) 1"),
        executor.submit(ran.append, "in 3 s", deadline=base + 3),
        executor.submit(ran.append, "no deadline (due now) 2"),
        executor.submit(ran.append, "in 3 s, later", deadline=base + 3),
    ]
    gate.set()
    for f in [blocker, *futures]:
        f.result(5)
    assert ran == ["no deadline (due now) 1", "no deadline (due now) 2", "in 1 s", "in 3 s", "in 3 s, later", "in 5 s"]
    executor.shutdown()


def test_a_call_cancelled_while_waiting_never_runs_and_shutdown_cancels_the_rest():
    executor = DeadlineExecutor(1, "test")
    gate, ran = threading.Event(), []
    executor.submit(gate.wait, 5)
    time.sleep(0.05)
    cancelled = executor.submit(ran.append, "cancelled")
    kept = executor.submit(ran.append, "kept")
    assert cancelled.cancel()
    gate.set()
    kept.result(5)
    assert ran == ["kept"]
    second_gate = threading.Event()
    executor.submit(second_gate.wait, 5)
    time.sleep(0.05)
    left = executor.submit(ran.append, "never")
    executor.shutdown()
    second_gate.set()
    assert left.cancelled() and ran == ["kept"]
    with pytest.raises(RuntimeError):
        executor.submit(ran.append, "after shutdown")


async def test_the_sentence_needed_first_is_synthesised_first(tmp_path):
    """Three streams wait for one slot: they start in deadline order, not arrival order."""
    svc = LocalService(ServiceLimits("test", 1, 8, 10.0, pool_size=1))
    release, log = tmp_path / "release", tmp_path / "order"
    busy = asyncio.create_task(svc.call("probe.wait_for_file", str(release)))
    await asyncio.sleep(0.05)
    now = time.monotonic()

    async def sentence(name, deadline):
        async for _ in svc.stream("probe.numbers", 1, 0, str(tmp_path / name), deadline=deadline):
            with open(log, "a") as f:
                f.write(name + "\n")

    waiting = [asyncio.create_task(sentence(name, now + due)) for name, due in (("plenty-buffered", 3.0),
                                                                                ("runs-dry-soon", 0.3),
                                                                                ("first-sentence", 0.0))]
    await asyncio.sleep(0.05)
    release.touch()
    await asyncio.gather(busy, *waiting)
    assert log.read_text().split() == ["first-sentence", "runs-dry-soon", "plenty-buffered"]
    svc.shutdown()


async def test_a_call_that_times_out_while_waiting_frees_its_place(tmp_path):
    svc = LocalService(ServiceLimits("test", 1, 1, 0.3, pool_size=1))
    release = tmp_path / "release"
    busy = asyncio.create_task(svc.call("probe.wait_for_file", str(release), timeout=10))
    await asyncio.sleep(0.05)
    with pytest.raises(ServiceTimeout):
        await svc.call("probe.sleep", 0)  # waits behind the busy call, gives up after 0.3 s
    assert svc.occupancy()["queued"] == 0
    release.touch()
    assert await busy == "released"
    # Both places are free again: one call runs and one may wait (queue_size 1).
    assert await asyncio.gather(svc.call("probe.sleep", 0), svc.call("probe.sleep", 0)) == [0, 0]
    svc.shutdown()


async def test_the_pacer_says_when_the_device_runs_dry():
    async def nowhere(_):
        pass

    pacer = Pacer(nowhere, nowhere, frame_ms=60, lead_frames=2)
    loop = asyncio.get_running_loop()
    assert pacer.runs_dry_at() == pytest.approx(loop.time(), abs=0.01)  # nothing playing: due now
    await pacer.begin()
    for _ in range(20):
        await pacer.audio(b"x")
    # 20 frames of 60 ms queued or in the device's buffer: dry in ~1.2 s
    assert pacer.runs_dry_at() - loop.time() == pytest.approx(1.2, abs=0.1)
    await asyncio.sleep(0.6)
    assert pacer.runs_dry_at() - loop.time() == pytest.approx(0.6, abs=0.1)
    await pacer.end()
    await pacer.wait_stopped()
    assert pacer.runs_dry_at() == pytest.approx(loop.time(), abs=0.01)
    await pacer.close()

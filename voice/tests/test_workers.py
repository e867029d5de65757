"""The dispatch seam: bounded admission, per-device shares, FIFO order, timeouts, streamed results,
cancellation. Each test runs on the configured backend: in-process threads, or (with
XIAOZHI_WORKER_BACKEND=celery) a real Celery worker process on Redis (conftest's fixture)."""
import asyncio
import dataclasses

import pytest
from django.conf import settings

from voice.conf import ServiceLimits, service_limits
from voice.tests import probe_operations
from voice.workers import ServiceBusy, ServiceTimeout, make_service, services

CELERY = settings.XIAOZHI_WORKER_BACKEND == "celery"


def service(max_concurrent=1, queue_size=2, timeout=5.0, first_token_timeout=None, per_device=None, name="test",
            stall_timeout=None):
    return make_service(ServiceLimits(name, max_concurrent, queue_size, timeout, pool_size=1,
                                      first_token_timeout=first_token_timeout, per_device=per_device,
                                      stall_timeout=stall_timeout))


async def wait_until(condition, limit=10.0):
    """Wait for a condition another process brings about; fail (not hang) if it never comes."""
    for _ in range(int(limit / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never became true")


async def test_calls_beyond_the_queue_are_refused_at_once(tmp_path):
    svc = service(max_concurrent=1, queue_size=2)
    release = tmp_path / "release"
    calls = [asyncio.create_task(svc.call("probe.wait_for_file", str(release))) for _ in range(3)]
    await asyncio.sleep(0.05)
    # Refused while the admitted calls are still blocked: had it waited, it could only have ended
    # after the release (and with a timeout, not ServiceBusy).
    with pytest.raises(ServiceBusy):
        await svc.call("probe.sleep", 0)
    assert not any(call.done() for call in calls)
    release.touch()
    assert await asyncio.gather(*calls) == ["released"] * 3
    occupancy = svc.occupancy()
    assert occupancy["rejected"] == 1 and occupancy["completed"] == 3 and occupancy["active"] == 0 and occupancy["queued"] == 0


async def test_a_device_over_its_share_is_refused_and_counted_while_others_are_served(tmp_path):
    svc = service(max_concurrent=2, queue_size=4, per_device=1)
    release = tmp_path / "release"
    first = asyncio.create_task(svc.call("probe.wait_for_file", str(release), owner="device-a"))
    await asyncio.sleep(0.05)
    with pytest.raises(ServiceBusy, match="device-a"):
        await svc.call("probe.sleep", 0, owner="device-a")
    other = asyncio.create_task(svc.call("probe.wait_for_file", str(release), owner="device-b"))
    release.touch()
    assert await asyncio.gather(first, other) == ["released", "released"]
    # once its call is over the device may call again
    assert await svc.call("probe.sleep", 0, owner="device-a") == 0
    occupancy = svc.occupancy()
    assert occupancy["rejected"] == 1 and occupancy["rejected_per_device"] == 1 and occupancy["completed"] == 3


async def test_waiting_calls_run_in_arrival_order(tmp_path):
    # Celery: one submitting thread per service keeps the broker queue in admission order, and the
    # "test" queue's worker takes one call at a time, as its max_concurrent says.
    svc = service(max_concurrent=1, queue_size=10)
    log = tmp_path / "order"
    await asyncio.gather(*(svc.call("probe.append", str(log), i, 0.01) for i in range(6)))
    assert log.read_text().split() == [str(i) for i in range(6)]


async def test_a_slow_call_times_out_and_is_counted():
    svc = service(timeout=0.3)
    with pytest.raises(ServiceTimeout):
        await svc.call("probe.sleep", 2.0)
    assert svc.occupancy()["timed_out"] == 1


async def test_a_call_nobody_answers_times_out_and_frees_its_place():
    # A queue no worker consumes (Celery), or a call that outlives its timeout (local).
    svc = service(name="nobody" if CELERY else "test", timeout=0.3, queue_size=0)
    with pytest.raises(ServiceTimeout):
        await svc.call("probe.sleep", 2.0)
    occupancy = svc.occupancy()
    assert occupancy["timed_out"] == 1
    if CELERY:  # the caller's place is free again at once (a local thread still runs its call)
        assert occupancy["active"] == 0 and occupancy["queued"] == 0


async def test_a_stream_yields_items_and_stops_its_producer_when_abandoned(tmp_path):
    svc = service(max_concurrent=1, queue_size=0)
    progress = tmp_path / "progress"
    got = []
    stream = svc.stream("probe.numbers", 1000, 0.01, str(progress))
    async for item in stream:
        got.append(item)
        if len(got) == 5:
            break
    await stream.aclose()
    assert got == [0, 1, 2, 3, 4]
    await wait_until(lambda: progress.exists() and progress.read_text().endswith("stopped"))
    assert int(progress.read_text().split()[0]) < 1000, "the producer ran to the end"
    # the slot is free: the next call is admitted (queue_size 0 would refuse it otherwise)
    await wait_until(lambda: svc.occupancy()["active"] == 0)
    assert await svc.call("probe.sleep", 0) == 0


async def test_a_stream_error_reaches_the_consumer():
    svc = service()
    got = []
    with pytest.raises(RuntimeError, match="fell over"):
        async for item in svc.stream("probe.broken"):
            got.append(item)
    assert got == ["first"]
    assert svc.occupancy()["failed"] == 1


async def test_a_stream_whose_first_item_is_late_times_out():
    svc = service(first_token_timeout=0.2)
    with pytest.raises(ServiceTimeout):
        async for _ in svc.stream("probe.late", 2.0):
            pass
    assert svc.occupancy()["timed_out"] == 1


async def test_a_stream_that_stalls_after_its_first_items_times_out_long_before_the_whole_call_limit():
    svc = service(timeout=20.0, stall_timeout=0.3)
    got = []
    with pytest.raises(ServiceTimeout, match="stalled after 2 items"):  # not the 20 s whole-call limit
        async for item in svc.stream("probe.gap", 2, 5.0):
            got.append(item)
    assert got == [0, 1]
    assert svc.occupancy()["timed_out"] == 1


async def test_time_spent_waiting_in_the_queue_does_not_count_against_the_first_item():
    svc = service(max_concurrent=1, queue_size=2, timeout=10.0, first_token_timeout=0.5)
    ahead = asyncio.create_task(svc.call("probe.sleep", 1.0))  # holds the only slot for 1 s
    await asyncio.sleep(0.05)
    got = [item async for item in svc.stream("probe.gap", 1, 0.0)]  # waits 1 s in the queue, then is quick
    assert got == [0]
    assert await ahead == 1.0
    assert svc.occupancy()["timed_out"] == 0


async def test_binary_arguments_and_results_cross_the_seam_intact():
    from voice.audio.opus import OpusDecoder

    svc = service(max_concurrent=2, queue_size=2, timeout=30)
    frames = []
    async for batch in svc.stream("tts_frames", "fake", "one two three", None, 16000):
        frames += batch
    assert frames and all(isinstance(f, bytes) for f in frames)
    decoder = OpusDecoder(16000, 1)
    assert sum(len(decoder.decode(f)) for f in frames) >= 16000 * 0.7 and decoder.errors == 0


def test_both_backends_are_the_declared_service():
    from voice.workers import InProcessService, Service
    from voice.workers.celery_service import CeleryService
    from voice.workers.local import LocalService

    limits = ServiceLimits("test", 1, 2, 5.0, pool_size=1)
    local, remote = LocalService(limits), CeleryService(limits)
    try:
        assert isinstance(local, Service) and isinstance(remote, Service)
        assert isinstance(local, InProcessService) and not isinstance(remote, InProcessService)
        assert isinstance(make_service(service_limits("vad"), backend="celery"), LocalService)  # the VAD stays here
    finally:
        local.shutdown()
        remote.shutdown()


def test_monitoring_reads_the_services_without_building_them(monkeypatch):
    from monitoring.collectors import service_occupancy
    from voice.workers import base, built_services

    monkeypatch.setattr(base, "_built", None)
    assert service_occupancy() == {} and built_services() == {} and base._built is None
    fake = {"asr": service(name="asr")}
    monkeypatch.setattr(base, "_built", fake)
    assert services() is fake and set(service_occupancy()) == {"asr"}
    assert service_occupancy()["asr"]["active"] == 0
    fake["asr"].shutdown()


async def test_unknown_operations_are_refused_with_their_name():
    with pytest.raises(LookupError, match="probe.nothing"):
        await service().call("probe.nothing")


@pytest.mark.models
@pytest.mark.django_db(transaction=True)
async def test_a_reply_that_never_comes_ends_the_turn_with_an_apology(connect_device, say, monkeypatch):
    from devices.models import Turn

    monkeypatch.setattr(settings, "XIAOZHI_LLM_PROVIDER", probe_operations.PROBE_LLM)
    llm = make_service(dataclasses.replace(service_limits("llm"), first_token_timeout=1.0))
    monkeypatch.setitem(services(), "llm", llm)
    device = await connect_device()
    result = await device.turn(say("What is the capital of France?"), mode="manual")
    assert "capital" in result.stt.lower()
    assert result.audio and result.stopped, "the device heard an apology and tts stop"
    await device.close()
    turn = await Turn.objects.aget()
    assert turn.error.startswith("ServiceTimeout")
    assert llm.occupancy()["timed_out"] == 1

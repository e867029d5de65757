"""Per-device memory (voice/memory.py) without sockets: extraction, the session's hand-over, and the
process's update queue on a real in-process LLM service (fake provider) and the real database."""
import asyncio
import threading

import pytest

from devices import memory_records
from devices.models import Device
from voice import live_stats, memory
from voice.conf import ServiceLimits
from voice.memory import MemoryJob, MemoryStore, MemoryUpdates, SessionMemory
from voice.workers.local import LocalService

ANA = (("My name is Ana and I love jazz.", "Nice to meet you, Ana!"),)


# -- extraction ----------------------------------------------------------------------------------------------
def test_self_statements_become_third_person_facts_and_questions_none():
    assert [fact for _, fact in memory.extract_facts("My name is Ana and I love jazz.")] == [
        "The user's name is Ana.", "The user loves jazz."]
    assert [fact for _, fact in memory.extract_facts("Hi, I live in Paris, and I really like my dog!")] == [
        "The user lives in Paris.", "The user likes their dog."]
    assert memory.extract_facts("What is my name?") == []
    assert memory.extract_facts("Tell me a joke.") == []


def test_a_new_name_replaces_the_old_likes_accumulate_and_repeats_are_kept_once():
    old = "The user's name is Ana. The user loves jazz."
    merged = memory.merge_extracted(old, (("My name is Bob. I love jazz.", ""), ("I like tea.", "")), 500)
    assert merged == "The user loves jazz. The user's name is Bob. The user likes tea."


def test_the_memory_stays_within_its_bound_dropping_the_oldest_facts():
    old = "Written by hand by the owner. " * 3
    merged = memory.merge_extracted(old, (("My name is Ana and I love jazz.", ""),), 60)
    assert len(merged) <= 60 and merged.endswith("The user loves jazz.") and "Ana" in merged
    assert len(memory.clip("word " * 100, 42)) <= 42


def test_the_memory_follows_the_system_prompt_and_no_memory_changes_nothing():
    assert memory.prompt_with_memory("Be brief.", "The user's name is Ana.") == "Be brief. The user's name is Ana."
    assert memory.prompt_with_memory("Be brief.", "  ") == "Be brief."


def test_auto_extracts_for_the_bundled_model_and_asks_any_other_llm():
    assert memory.method_for("smollm2") == "extract"
    assert memory.method_for("openai") == "llm"
    assert memory.method_for("smollm2", "llm") == "llm"


def test_the_summary_request_carries_the_old_memory_and_the_dialogue_and_its_answer_is_bounded():
    messages = memory.summary_messages("The user likes tea.", ANA, 200)
    assert "200 characters" in messages[0]["content"]
    assert "Old memory: The user likes tea." in messages[1]["content"]
    assert "User: My name is Ana and I love jazz." in messages[1]["content"]
    assert memory.clean_summary('New memory: "The user\'s name is Ana."', "", 200) == "The user's name is Ana."
    assert memory.clean_summary("   ", "The user likes tea.", 200) == "The user likes tea."
    assert len(memory.clean_summary("The user is nice. " * 50, "", 100)) <= 100


# -- the session's side ----------------------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.jobs = []

    def submit(self, job):
        self.jobs.append(job)
        return True


def test_a_session_hands_over_every_n_turns_and_at_close_and_after_close():
    queue = Recorder()
    session = SessionMemory(1, "aa", "openai", every_turns=2, queue=lambda: queue)
    session.observe("one")
    session.observe("")  # nothing heard: not a turn
    assert queue.jobs == []
    session.observe("two", "reply")
    assert [job.dialogue for job in queue.jobs] == [(("one", ""), ("two", "reply"))]
    session.observe("three")
    session.close()
    session.observe("cut off by the disconnect")  # its record is stored after the socket closed
    assert [job.dialogue for job in queue.jobs[1:]] == [(("three", ""),), (("cut off by the disconnect", ""),)]


def test_a_session_with_every_turns_zero_hands_over_at_close_only_and_keeps_a_bounded_dialogue():
    queue = Recorder()
    session = SessionMemory(1, "aa", "openai", every_turns=0, queue=lambda: queue)
    for i in range(memory.MAX_DIALOGUE_TURNS + 5):
        session.observe(f"turn {i}")
    assert queue.jobs == []
    session.close()
    (job,) = queue.jobs
    assert len(job.dialogue) == memory.MAX_DIALOGUE_TURNS and job.dialogue[-1][0] == f"turn {memory.MAX_DIALOGUE_TURNS + 4}"


# -- the queue, on the real LLM service and database ----------------------------------------------------------
def llm_service(max_concurrent=1):
    return LocalService(ServiceLimits("llm", max_concurrent=max_concurrent, queue_size=4, timeout=10.0, pool_size=1))


class SummaryProbe:
    """Replaces the ``summarize_memory`` operation, a speed-up that records what it was given (the
    real operation runs against a fake OpenAI-compatible server in test_memory_sessions.py)."""

    def __init__(self, answer="The user's name is Ana. The user loves jazz."):
        self.answer = answer
        self.calls = []


@pytest.fixture
def summaries(monkeypatch):
    from voice.workers import operations

    probe = SummaryProbe()

    def summarize(llm_name, old_memory, dialogue, max_chars, model=None):
        probe.calls.append((llm_name, old_memory, dialogue, max_chars, model))
        return probe.answer

    monkeypatch.setitem(operations.OPERATIONS, "summarize_memory",
                        operations.Operation("summarize_memory", summarize, False))
    return probe


def queue_for(service, **options):
    options = {"max_pending": 10, "defer_seconds": 60.0, "max_chars": 200, "method": "llm", "retry_seconds": 0.05,
               **options}
    return MemoryUpdates(services=lambda: {"llm": service}, **options)


def job(device, dialogue=ANA, llm="openai"):
    return MemoryJob(device.pk, device.device_id, llm, "some-model", dialogue)


@pytest.mark.django_db(transaction=True)
async def test_an_update_asks_the_llm_with_the_stored_memory_and_stores_its_answer(summaries):
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:01", memory="The user likes tea.")
    queue = queue_for(llm_service())
    assert queue.submit(job(device))
    assert await queue.drain(10)
    await device.arefresh_from_db()
    assert device.memory == "The user's name is Ana. The user loves jazz." and device.memory_updated_at
    assert summaries.calls == [("openai", "The user likes tea.", [list(ANA[0])], 200, "some-model")]


@pytest.mark.django_db(transaction=True)
async def test_a_busy_llm_defers_the_update_until_it_is_idle_and_nothing_is_lost(summaries):
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:02")
    service = llm_service()
    release = threading.Event()
    reply = asyncio.ensure_future(service.run(release.wait, owner="another-device"))  # a turn holds the LLM
    while not service.occupancy()["active"]:
        await asyncio.sleep(0.01)
    deferred = live_stats.snapshot()["counters"].get("memory_updates_deferred", 0)
    queue = queue_for(service)
    queue.submit(job(device))
    assert not await queue.drain(0.5)  # still waiting for the LLM
    assert summaries.calls == [], "the update ran while a reply was using the LLM"
    assert live_stats.snapshot()["counters"]["memory_updates_deferred"] > deferred
    assert queue.pending() == 1
    release.set()
    await reply
    assert await queue.drain(10)
    await device.arefresh_from_db()
    assert "Ana" in device.memory and len(summaries.calls) == 1


@pytest.mark.django_db(transaction=True)
async def test_an_llm_busy_past_the_deferral_limit_gives_the_update_up_and_says_so(summaries, caplog):
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:03")
    service = llm_service()
    release = threading.Event()
    reply = asyncio.ensure_future(service.run(release.wait))
    while not service.occupancy()["active"]:
        await asyncio.sleep(0.01)
    expired = live_stats.snapshot()["counters"].get("memory_updates_expired", 0)
    queue = queue_for(service, defer_seconds=0.2)
    queue.submit(job(device))
    assert await queue.drain(10)
    release.set()
    await reply
    assert summaries.calls == []
    assert live_stats.snapshot()["counters"]["memory_updates_expired"] == expired + 1
    assert "given up" in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_updates_of_one_device_waiting_together_are_one_update_with_both_dialogues(summaries):
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:04")
    service = llm_service()
    release = threading.Event()
    reply = asyncio.ensure_future(service.run(release.wait))
    while not service.occupancy()["active"]:
        await asyncio.sleep(0.01)
    queue = queue_for(service)
    queue.submit(job(device, (("My name is Ana.", ""),)))
    await asyncio.sleep(0.1)
    queue.submit(job(device, (("I love jazz.", ""),)))
    release.set()
    await reply
    assert await queue.drain(10)
    assert [call[2] for call in summaries.calls] == [[["My name is Ana.", ""], ["I love jazz.", ""]]]


@pytest.mark.django_db(transaction=True)
async def test_a_full_queue_refuses_and_counts_and_other_devices_still_update(summaries):
    first = await Device.objects.acreate(device_id="aa:00:00:00:00:05")
    second = await Device.objects.acreate(device_id="aa:00:00:00:00:06")
    dropped = live_stats.snapshot()["counters"].get("memory_updates_dropped", 0)
    queue = queue_for(llm_service(), max_pending=1)
    assert queue.submit(job(first))
    assert not queue.submit(job(second))
    assert live_stats.snapshot()["counters"]["memory_updates_dropped"] == dropped + 1
    assert await queue.drain(10)
    assert await queue.drain(1)
    assert [c[1] for c in summaries.calls] == [""]


@pytest.mark.django_db(transaction=True)
async def test_an_edit_made_while_the_llm_summarised_is_not_undone(summaries):
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:07", memory="Old.")
    calls = []
    real = memory_records.replace_memory

    def replace(pk, old, new):
        if not calls:  # the owner edits the memory in the admin just before the first write
            Device.objects.filter(pk=pk).update(memory="Edited by the owner.")
        calls.append(old)
        return real(pk, old, new)

    queue = queue_for(llm_service())
    queue._store = lambda: MemoryStore(memory_records.load_memory, replace)
    queue.submit(job(device))
    assert await queue.drain(10)
    assert calls == ["Old.", "Edited by the owner."]
    assert [c[1] for c in summaries.calls] == ["Old.", "Edited by the owner."]


@pytest.mark.django_db(transaction=True)
async def test_extraction_needs_no_llm_and_merges_into_the_stored_memory():
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:08", memory="The user lives in Rome.")

    class NoLLM:
        def occupancy(self):
            raise AssertionError("extraction must not look at the LLM")

    queue = queue_for(NoLLM(), method="auto")
    queue.submit(job(device, llm="smollm2"))
    assert await queue.drain(10)
    await device.arefresh_from_db()
    assert device.memory == "The user lives in Rome. The user's name is Ana. The user loves jazz."


def test_an_update_queued_on_a_loop_that_closed_runs_on_the_next_one(transactional_db, summaries):
    device = Device.objects.create(device_id="aa:00:00:00:00:09")
    service = llm_service()
    release = threading.Event()
    queue = queue_for(service)

    async def first_loop():  # a session closes while the LLM is busy; then its loop ends
        reply = asyncio.ensure_future(service.run(release.wait))
        while not service.occupancy()["active"]:
            await asyncio.sleep(0.01)
        queue.submit(job(device))
        await asyncio.sleep(0.1)
        release.set()
        await reply

    asyncio.run(first_loop())
    assert summaries.calls == [] and queue.pending() == 1
    assert asyncio.run(queue.drain(10))
    device.refresh_from_db()
    assert "Ana" in device.memory


@pytest.mark.django_db(transaction=True)
async def test_a_failing_llm_is_retried_then_given_up_with_a_log_line(summaries, caplog):
    device = await Device.objects.acreate(device_id="aa:00:00:00:00:0a")
    from voice.workers import operations

    def broken(*args):
        summaries.calls.append(args)
        raise RuntimeError("LLM server down")

    operations.OPERATIONS["summarize_memory"] = operations.Operation("summarize_memory", broken, False)
    queue = queue_for(llm_service(), max_attempts=3)
    queue.submit(job(device))
    assert await queue.drain(10)
    assert len(summaries.calls) == 3
    assert "given up after 3 failures" in caplog.text
    await device.arefresh_from_db()
    assert device.memory == ""


def test_a_check_warns_when_the_bundled_model_is_asked_to_summarise(settings):
    from voice.checks import check_memory_method

    settings.XIAOZHI_LLM_PROVIDER = "smollm2"
    settings.XIAOZHI_MEMORY_METHOD = "llm"
    assert [w.id for w in check_memory_method()] == ["voice.W101"]
    settings.XIAOZHI_MEMORY_METHOD = "auto"
    assert check_memory_method() == []
    settings.XIAOZHI_LLM_PROVIDER, settings.XIAOZHI_MEMORY_METHOD = "openai", "llm"
    assert check_memory_method() == []


@pytest.mark.django_db(transaction=True)
async def test_a_refusal_by_the_llm_service_defers_rather_than_counts_as_a_failure(summaries):
    """The device's own share (``per_device``) may be taken by its new session's turn."""
    from voice.workers import ServiceBusy

    device = await Device.objects.acreate(device_id="aa:00:00:00:00:0b")
    real = llm_service()

    class RefusesTwice:
        refusals = 0

        def occupancy(self):
            return real.occupancy()

        async def call(self, *args, **kwargs):
            if self.refusals < 2:
                self.refusals += 1
                raise ServiceBusy("aa:00:00:00:00:0b already has 1 call in llm")
            return await real.call(*args, **kwargs)

    service = RefusesTwice()
    queue = queue_for(service, max_attempts=1)
    queue.submit(job(device))
    assert await queue.drain(10)
    await device.arefresh_from_db()
    assert service.refusals == 2 and "Ana" in device.memory


@pytest.mark.django_db(transaction=True)
async def test_an_update_that_needs_no_llm_is_not_held_up_by_one_waiting_for_it(summaries):
    waiting = await Device.objects.acreate(device_id="aa:00:00:00:00:0c")
    extracted = await Device.objects.acreate(device_id="aa:00:00:00:00:0d")
    service = llm_service()
    release = threading.Event()
    reply = asyncio.ensure_future(service.run(release.wait))
    while not service.occupancy()["active"]:
        await asyncio.sleep(0.01)
    queue = queue_for(service, method="auto")
    queue.submit(job(waiting, llm="openai"))
    queue.submit(job(extracted, llm="smollm2"))
    for _ in range(200):
        await extracted.arefresh_from_db()
        if extracted.memory:
            break
        await asyncio.sleep(0.05)
    assert extracted.memory == "The user's name is Ana. The user loves jazz."
    assert queue.pending() == 1 and summaries.calls == []
    release.set()
    await reply
    assert await queue.drain(10)
    await waiting.arefresh_from_db()
    assert "Ana" in waiting.memory

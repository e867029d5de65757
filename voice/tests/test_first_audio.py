"""First audio before more text (issue 12, goal 2): generation pauses while a first clause is
being synthesised, and never for longer than the hold allows."""
import threading

from voice.providers.fake import FakeLLM, FakeTTS
from voice.tests.harness import Conversation
from voice.workers import first_audio
from voice.workers.first_audio import FirstAudioGate


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_generation_waits_for_a_held_first_clause_until_it_is_released():
    gate = FirstAudioGate(max_hold=60)
    hold = gate.hold()
    passed = threading.Event()
    thread = threading.Thread(target=lambda: (gate.wait(), passed.set()))
    thread.start()
    assert not passed.wait(0.2)  # still held
    hold.release()
    thread.join(5)
    assert passed.is_set() and gate.waited == 1
    hold.release()  # idempotent
    gate.wait()  # nothing held: returns at once
    assert gate.waited == 1


def test_a_cancelled_stream_stops_waiting():
    gate = FirstAudioGate(max_hold=60)
    gate.hold()
    cancel = threading.Event()
    thread = threading.Thread(target=gate.wait, args=(cancel,))
    thread.start()
    cancel.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_hold_past_its_limit_no_longer_holds_generation_back():
    clock = Clock()
    gate = FirstAudioGate(max_hold=0.3, clock=clock)
    gate.hold()  # never released: a stuck synthesis
    assert gate.holding()
    clock.now += 0.31
    assert not gate.holding()
    gate.wait()  # returns: the hold has expired
    assert gate.waited == 0


def test_a_zero_hold_disables_the_gate():
    gate = FirstAudioGate(max_hold=0)
    gate.hold()
    assert not gate.holding()
    gate.wait()
    assert gate.waited == 0


async def test_the_llm_pauses_while_the_first_clause_is_synthesised_and_the_reply_stays_whole():
    gate = first_audio.gate()
    before = gate.waited
    llm = FakeLLM("Sure thing, here it is. The answer is forty two. That is all.", delay_token=0.02)
    async with Conversation(llm=llm, tts=FakeTTS(delay_first=0.15, seconds_per_word=0.03)) as c:
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop", timeout=10)
        (record,) = await c.turns_recorded(1)
    assert gate.waited > before  # generation paused at least once for the first clause
    assert record.reply_text == "Sure thing, here it is. The answer is forty two. That is all."
    assert c.sentences()[0] == "Sure thing, here it is."
    assert gate.holding() is False

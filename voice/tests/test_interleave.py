"""Replies taking turns on one llama.cpp context (``voice/providers/llm/interleave.py``): the turn
order on plain threads, then the bundled SmolLM2 writing two replies at once."""
import threading
import time

import pytest

from voice.providers.llm import interleave
from voice.pipeline.sentences import word_count as words
from voice.providers.llm.interleave import NEVER, Schedule, Turns, TurnTimeout


def test_words_count_chinese_characters_one_and_a_half_to_a_word():
    assert words("巴黎是法国的首都") == 8 / 1.5 and words("two words") == 2


def test_a_reply_is_due_when_the_device_would_run_out_of_words():
    schedule = Schedule(asked=100.0)
    assert schedule.first_due == schedule.next_due == 100.0 + interleave.FIRST_CLAUSE_WAIT
    schedule.wrote("The history of Paris", now=100.5)
    schedule.wrote(" is steeped", now=100.6)
    assert schedule.next_due == 100.5 + interleave.SPEAKING_DELAY + 6 * interleave.WORD_SECONDS - interleave.NEXT_CLAUSE_SECONDS
    before = schedule.next_due
    schedule.wrote(" in history, with a rich tapestry")
    assert schedule.next_due > before  # more written: due later
    summary = Schedule(asked=100.0, background=True)  # a memory summary: nobody waits for it
    summary.wrote("The user likes tea.")
    assert summary.first_due == summary.next_due == NEVER


def _waiter(turns: Turns, due: float, order: list, name: str, beats: list | None = None, cancel=None):
    def run():
        gen = turns.wait(due, cancel, beat=name)
        try:
            while True:
                beat = next(gen)
                if beats is not None:
                    beats.append(beat)
        except StopIteration as done:
            if done.value:
                order.append(name)
                turns.release()
            else:
                order.append(f"{name} cancelled")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_turns_go_earliest_due_first_and_background_work_last():
    turns = Turns(1)
    assert list(turns.wait(5.0)) == []  # free: taken at once, no heartbeat
    order: list = []
    threads = [_waiter(turns, NEVER, order, "prefill")]
    _until(lambda: len(turns._waiting) == 1)
    threads.append(_waiter(turns, 30.0, order, "second sentence, due later"))
    _until(lambda: len(turns._waiting) == 2)
    threads.append(_waiter(turns, 20.0, order, "first clause, due sooner"))
    _until(lambda: len(turns._waiting) == 3)
    assert turns.wanted(25.0) and not turns.wanted(20.0) and not Turns(1).wanted(25.0)
    turns.release(handed_over=True)
    for thread in threads:
        thread.join(5)
    assert order == ["first clause, due sooner", "second sentence, due later", "prefill"]
    assert turns.handovers == 1 and turns._free == 1


def test_background_work_waiting_never_makes_a_reply_give_its_turn_up():
    turns = Turns(1)
    list(turns.wait(1.0))
    order: list = []
    thread = _waiter(turns, NEVER, order, "prefill")
    _until(lambda: len(turns._waiting) == 1)
    assert not turns.wanted(NEVER)
    turns.release()
    thread.join(5)
    assert order == ["prefill"]


def test_a_waiter_beats_while_it_waits_and_leaves_the_queue_when_cancelled(monkeypatch):
    monkeypatch.setattr(interleave, "HEARTBEAT_SECONDS", 0.02)
    turns = Turns(1)
    list(turns.wait(1.0))
    order, beats, cancel = [], [], threading.Event()
    thread = _waiter(turns, 2.0, order, "beat", beats, cancel)
    _until(lambda: len(beats) >= 3)
    cancel.set()
    thread.join(5)
    assert order == ["beat cancelled"] and set(beats) == {"beat"}
    assert turns._waiting == []
    turns.release()
    assert list(turns.wait(1.0)) == []  # the turn is free again: nothing was leaked


def test_closing_a_waiting_generator_gives_its_place_up(monkeypatch):
    monkeypatch.setattr(interleave, "HEARTBEAT_SECONDS", 0.01)
    turns = Turns(1)
    list(turns.wait(1.0))
    gen = turns.wait(2.0)
    next(gen)  # a heartbeat: still waiting
    gen.close()
    assert turns._waiting == []


def test_a_cancelled_waiter_never_takes_a_free_turn():
    turns = Turns(1)
    list(turns.wait(1.0))
    cancel = threading.Event()
    gen = turns.wait(0.5, cancel)  # due sooner than anyone
    cancel.set()
    turns.release()
    with pytest.raises(StopIteration) as done:
        next(gen)
    assert done.value.value is False and turns._waiting == [] and turns._free == 1


def test_background_work_gives_up_waiting_for_a_turn_after_its_timeout():
    turns = Turns(1)
    list(turns.wait(1.0))
    started = time.monotonic()
    with pytest.raises(TurnTimeout):
        with turns.turn(timeout=0.1):
            pytest.fail("ran without a turn")
    assert time.monotonic() - started < 2 and turns._waiting == []
    turns.release()
    with turns.turn(timeout=0.1):
        assert turns._free == 0
    assert turns._free == 1


def test_two_slots_serve_two_at_once():
    turns = Turns(2)
    list(turns.wait(1.0))
    order: list = []
    thread = _waiter(turns, 2.0, order, "second")
    thread.join(5)
    assert order == ["second"]


# -- the bundled model ---------------------------------------------------------------------------------------------
LONG = [{"role": "system", "content": "You are a friendly voice assistant. Answer in one or two short sentences."},
        {"role": "user", "content": "Tell me about the history of Paris."}]
SHORT = [LONG[0], {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    from voice.providers.llm.smollm2 import SmolLM2LLM

    llm = SmolLM2LLM(max_tokens=60)
    yield llm
    llm.close()


def _write(llm, messages, pieces: list, first_piece: threading.Event | None = None):
    for piece in llm.stream(messages, threading.Event()):
        if piece:
            pieces.append((time.monotonic(), piece))
            if first_piece is not None:
                first_piece.set()


@pytest.mark.models
def test_a_reply_asked_during_a_long_one_is_written_at_its_next_clause_and_the_long_one_goes_on(smollm2):
    alone = []
    _write(smollm2, LONG, alone)
    alone_text = "".join(p for _, p in alone)
    first_clause = alone_text[: alone_text.index(",") + 1]
    assert len(alone) > 20  # long enough to be interleaved

    long_pieces, short_pieces = [], []
    started = threading.Event()
    handovers = smollm2._turns.handovers
    first = threading.Thread(target=_write, args=(smollm2, LONG, long_pieces, started))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=_write, args=(smollm2, SHORT, short_pieces))
    second.start()
    first.join(60)
    second.join(60)
    long_text, short_text = "".join(p for _, p in long_pieces), "".join(p for _, p in short_pieces)
    # The short answer's first words came before the long one was done: it gave its context up...
    assert smollm2._turns.handovers > handovers
    assert short_pieces[0][0] < long_pieces[-1][0]
    assert "Paris" in short_text
    # ...and took it back where it was: the same opening, continued, not started again. (Its later
    # words may differ from the reply written alone: the prompt evaluated again in one batch gives
    # the greedy decode slightly different numbers.)
    assert long_text.startswith(first_clause) and long_text.count(first_clause) == 1
    assert len(long_pieces) > 20


@pytest.mark.models
def test_the_reply_prompt_is_the_chat_templates_so_the_cached_system_prompt_is_shared(smollm2):
    """Replies are written with ``create_completion`` on our ChatML text (a reply taken back goes on
    from its own words); prefill and warm-up use ``create_chat_completion``. The same tokens, or
    every reply would evaluate the system prompt again."""
    from voice.providers.llm.tool_router import chatml_prompt

    conversation = [*LONG[:1], {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, LONG[1]]
    for messages in (conversation, conversation[1:]):  # without a system message the template adds its own
        with smollm2._pool.borrow() as llm:
            llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
            evaluated = [int(t) for t in llm._input_ids]
            ours = llm.tokenize(chatml_prompt(messages, answer_start="").encode(), special=True)
        assert evaluated[: len(ours)] == ours

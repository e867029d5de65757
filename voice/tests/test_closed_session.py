"""A session that closed itself hears nothing more. The socket still delivers the frames queued
behind the close (the fuzz test: a run of bad frames, then more frames already on their way);
acting on them started turns and pacer tasks nobody owned any longer, left pending until the
garbage collector destroyed them ("Task was destroyed but it is pending")."""
import asyncio

from voice.protocol import CloseCode, Hello, Ping
from voice.providers.fake import FakeTTS
from voice.session import MAX_BAD_FRAMES

from voice.tests.harness import Conversation


def tasks_of(session) -> list[asyncio.Task]:
    tag = session.config.session_id[:8]
    return [t for t in asyncio.all_tasks() if not t.done() and (t.get_name().endswith(":" + tag) or t.get_name() == "pacer")]


async def test_frames_queued_behind_the_sessions_own_close_start_nothing():
    async with Conversation(tts=FakeTTS(seconds_per_word=0.01)) as c:
        for _ in range(MAX_BAD_FRAMES):
            c.session.handle_binary(b"")  # an empty binary message is a bad frame
        closed = await c.until("close")
        assert closed.message[0] == CloseCode.BAD_DATA
        after_close = len(c.sent)

        await c.send(Ping())
        await c.listen("start", "auto")
        c.say(0.3)
        await c.send(Hello(version=3))
        c.session.handle_binary(b"\x01\x00\x00\x10" + b'{"type": "ping"}')  # v3 JSON-in-binary
        await c.settle(300)

        assert c.sent[after_close:] == []  # no pong, no stt, no second hello
        assert tasks_of(c.session) == []


async def test_a_handler_that_was_awaiting_at_the_close_starts_nothing_after_it():
    # E.g. ``listen start`` while speaking awaits the abort; a watchdog closes the session in that
    # time; the handler then goes on to spawn a greeting or speak. None of it may outlive the close.
    from voice.pipeline.turn import speak

    async with Conversation(tts=FakeTTS(seconds_per_word=0.01)) as c:
        deps = c.session._deps()
        await c.session.close("a watchdog")
        after_close = len(c.sent)
        late = c.session._spawn(asyncio.sleep(10), "greeting")
        async with asyncio.timeout(1):
            await speak(deps, "Hello again.")
        await asyncio.sleep(0)
        assert late.cancelled()
        assert c.sent[after_close:] == [] and tasks_of(c.session) == []


async def test_the_turn_a_close_cuts_is_still_recorded():
    # The turn's record is spawned by the turn as the close cancels it, so after the close: that
    # one task must still run (the admin's turn list shows the cut turn), unlike anything else.
    async with Conversation(tts=FakeTTS(seconds_per_word=0.5)) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.6)
        await c.until("tts", "start")
        await c.session.close("the device disconnected")
        (record,) = await c.turns_recorded(1)
        assert record.user_text and record.error

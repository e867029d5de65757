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

"""Frames reach a device's session whatever the database thread is doing, and a reply to a client
that already left does not end its consumer (both found by the fuzz test, xiaozhi/tests/test_fuzz.py:
each cost a consumer its disconnect, leaking its slot, gauge and session row)."""
import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from autobahn.exception import Disconnected

from devices.auth import DeviceIdentity
from devices.consumers import DeviceConsumer
from voice.protocol import Ping, Pong, encode

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_a_ping_is_answered_while_the_database_thread_is_busy(connect_device):
    device = await connect_device("aa:bb:cc:00:0d:01")
    assert device.server_hello is not None
    release = threading.Event()
    # Database work of any consumer (a slow query, a locked SQLite) holds the one thread that
    # thread-sensitive calls share; a frame must not wait behind it.
    busy = asyncio.ensure_future(sync_to_async(release.wait)())
    try:
        await asyncio.sleep(0.1)
        await device.send_json(encode(Ping()))
        await device.wait_for(lambda e: isinstance(e.message, Pong), timeout=10)  # TimeoutError if not
        assert not busy.done()  # answered while the thread was still held
    finally:
        release.set()
        await busy


async def test_a_reply_to_a_client_that_already_left_is_dropped_without_raising():
    consumer = DeviceConsumer()
    consumer.scope = {"type": "websocket", "device_identity": DeviceIdentity("aa:bb:cc:00:0d:02", "c", None, "127.0.0.1")}
    sent = []

    async def gone(message):
        sent.append(message)
        raise Disconnected("Attempt to send on a closed protocol")

    consumer.base_send = gone
    await consumer.send_text(encode(Pong()))
    await consumer.send_bytes(b"\x00" * 10)
    assert [m["type"] for m in sent] == ["websocket.send", "websocket.send"]  # tried, and survived

"""server.max_connections over the real ASGI app: past the limit a socket is refused with 4503 before
anything starts, the devices already in keep talking, and a freed slot is used again."""
import pytest

from devices.connection_limits import ConnectionSlots, slots
from voice.protocol import CloseCode
from voice import live_stats
from voice.conf import performance_config

pytestmark = [pytest.mark.models, pytest.mark.django_db(transaction=True)]

QUESTION = "What is the capital of France?"


@pytest.fixture
def room_for_two(monkeypatch):
    """max_connections = 2 more than this process already holds (other tests may leave sockets open)."""
    monkeypatch.setenv("XIAOZHI_PERF__SERVER__MAX_CONNECTIONS", str(slots.held + 2))
    performance_config.cache_clear()
    yield
    performance_config.cache_clear()


def refused_count():
    return live_stats.snapshot()["counters"].get("connections_refused", 0)


async def test_the_third_device_is_refused_the_first_two_keep_talking_and_a_freed_slot_is_reused(
        connect_device, say, room_for_two):
    from devices.models import DeviceSession

    first = await connect_device("aa:bb:cc:00:00:01")
    second = await connect_device("aa:bb:cc:00:00:02")
    assert first.server_hello is not None and second.server_hello is not None
    refused_before = refused_count()
    sessions_before = await DeviceSession.objects.acount()

    third = await connect_device("aa:bb:cc:00:00:03")
    assert third.server_hello is None
    assert (third.close_code, third.close_reason) == (CloseCode.SERVER_FULL, "server full")
    assert refused_count() == refused_before + 1  # monitoring sees the rejection
    assert await DeviceSession.objects.acount() == sessions_before  # nothing registered for it

    for device in (first, second):
        result = await device.turn(say(QUESTION), mode="manual")
        assert result.stt and result.audio and result.stopped
    await first.close()  # the communicator waits until the consumer's disconnect has run

    fourth = await connect_device("aa:bb:cc:00:00:04")
    assert fourth.server_hello is not None and fourth.close_code is None
    result = await fourth.turn(say(QUESTION), mode="manual")
    assert result.stt and result.audio and result.stopped
    for device in (second, third, fourth):
        await device.close()


async def test_a_device_reconnecting_to_a_full_server_replaces_its_own_socket(connect_device, room_for_two):
    first = await connect_device("aa:bb:cc:00:00:11")
    await connect_device("aa:bb:cc:00:00:12")
    # e.g. after a Wi-Fi drop, the old socket not yet dead (the same device: the same Client-Id)
    again = await connect_device("aa:bb:cc:00:00:11", headers=first.handshake_headers())
    assert again.server_hello is not None
    assert await first.wait_closed(5) == 4409
    stranger = await connect_device("aa:bb:cc:00:00:13")
    assert stranger.close_code == CloseCode.SERVER_FULL
    for device in (first, again, stranger):
        await device.close()


def test_slots_count_per_device_and_never_go_negative():
    counter = ConnectionSlots()
    assert counter.try_acquire(1, "a") and not counter.try_acquire(1, "b") and counter.try_acquire(1, "a")
    counter.release("a"), counter.release("a"), counter.release("a")
    assert counter.held == 0 and counter.try_acquire(1, "b")


def test_address_slots_cap_each_address_let_a_device_replace_itself_and_forget_empty_addresses():
    from devices.connection_limits import AddressSlots

    per_address = AddressSlots()
    assert per_address.try_acquire(2, "192.0.2.1", "a") and per_address.try_acquire(2, "192.0.2.1", "b")
    assert not per_address.try_acquire(2, "192.0.2.1", "c")  # the cap
    assert per_address.try_acquire(2, "192.0.2.2", "c")  # another address has its own
    assert per_address.try_acquire(2, "192.0.2.1", "a")  # a reconnect of a device already in
    for device in ("a", "a", "b"):
        per_address.release("192.0.2.1", device)
    per_address.release("192.0.2.2", "c")
    assert per_address.held("192.0.2.1") == 0 and not per_address._by_address  # nothing kept for gone addresses

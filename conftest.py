"""Shared test fixtures. With DATABASE_URL / REDIS_URL set (as in CI) every test runs on MySQL and
Redis; an unreachable Redis is an error here, never a skip."""
import os

import pytest


def pytest_configure(config):
    from django.conf import settings

    # Tests import xiaozhi.asgi, which starts the monitoring scheduler in a server process; in the
    # test process it would write snapshots behind the tests' backs. Tests that need it turn it on.
    settings.XIAOZHI_MONITORING_SCHEDULER = "off"
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        import redis

        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
        except Exception as exc:  # noqa: BLE001
            raise pytest.UsageError(f"REDIS_URL={redis_url} is set but Redis does not answer: {exc}") from exc


class CommunicatorLink:
    """Lets the simulated device talk through Channels' in-process WebsocketCommunicator."""

    def __init__(self, communicator):
        self.communicator = communicator

    async def send(self, data):
        if isinstance(data, bytes):
            await self.communicator.send_to(bytes_data=data)
        else:
            await self.communicator.send_to(text_data=data)

    async def recv(self):
        from voice.simulated_device import LinkClosed

        # A long timeout: the communicator cancels the application when a receive times out.
        message = await self.communicator.receive_output(timeout=3600)
        if message["type"] == "websocket.close":
            raise LinkClosed(message.get("code"), message.get("reason", ""))
        return message.get("bytes") if message.get("bytes") is not None else message.get("text")

    async def close(self):
        await self.communicator.disconnect()


@pytest.fixture(scope="session")
def say():
    """Speech frames for a text, synthesised once per test run with the bundled voice."""
    from voice.simulated_device import speech_frames

    cache = {}

    def frames(text):
        if text not in cache:
            cache[text] = speech_frames(text)
        return cache[text]

    return frames


@pytest.fixture
def connect_device(transactional_db):
    """``await connect_device(...)`` -> a SimulatedDevice connected in-process to the real ASGI app."""
    from channels.testing import WebsocketCommunicator

    from voice.simulated_device import SimulatedDevice
    from xiaozhi.asgi import application

    devices = []

    async def connect(device_id=None, *, headers=None, hello=True, binary_version=1, token="", path="/xiaozhi/v1/"):
        device = SimulatedDevice(device_id, binary_version=binary_version)
        device.token = token
        raw = headers if headers is not None else device.handshake_headers()
        communicator = WebsocketCommunicator(
            application, path, headers=[(k.lower().encode(), v.encode()) for k, v in raw.items()]
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await device.attach(CommunicatorLink(communicator), hello=hello)
        devices.append(device)
        return device

    yield connect

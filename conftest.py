"""Shared test fixtures. With DATABASE_URL / REDIS_URL set (as in CI) every test runs on MySQL and
Redis; an unreachable Redis is an error here, never a skip."""
import asyncio
import os

import pytest


def pytest_configure(config):
    from django.conf import settings

    # Tests import xiaozhi.asgi, which starts the monitoring scheduler in a server process; in the
    # test process it would write snapshots behind the tests' backs. Tests that need it turn it on.
    settings.XIAOZHI_MONITORING_SCHEDULER = "off"
    redis_url = os.environ.get("REDIS_URL")
    if settings.XIAOZHI_WORKER_BACKEND == "celery":
        if not redis_url:
            raise pytest.UsageError("XIAOZHI_WORKER_BACKEND=celery needs REDIS_URL (broker and channel layer)")
        # Queues of this run only: another run on the same Redis never takes this run's calls.
        # (in the environment too, for the servers the end-to-end tests start).
        prefix = os.environ["XIAOZHI_WORKER_QUEUE_PREFIX"] = f"voice-test-{os.getpid()}"
        settings.XIAOZHI_WORKER_QUEUE_PREFIX = prefix
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
        from loadtest.simulated_device import LinkClosed

        # A long timeout: the communicator cancels the application when a receive times out.
        message = await self.communicator.receive_output(timeout=3600)
        if message["type"] == "websocket.close":
            raise LinkClosed(message.get("code"), message.get("reason", ""))
        return message.get("bytes") if message.get("bytes") is not None else message.get("text")

    async def close(self):
        await self.communicator.disconnect()


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test gets a channel layer of its own. Every test runs in a new event loop, and a
    channels-redis layer keeps asyncio locks bound to the loop that used them: a receive one test's
    loop left pending (a consumer, a drained worker reply) held the lock shared by all of this
    process's channels, and the next test's receives failed "bound to a different event loop" or
    waited for ever. (A server has one loop per process, so only tests reuse a layer this way.)"""
    from channels.layers import channel_layers

    channel_layers.backends.clear()


@pytest.fixture(scope="session")
def say():
    """Speech frames for a text, synthesised once per test run with the bundled voice."""
    from loadtest.simulated_device import spoken_frames

    cache = {}

    def frames(text):
        if text not in cache:
            cache[text] = spoken_frames(text)
        return cache[text]

    return frames


@pytest.fixture
async def connect_device(transactional_db):
    """``await connect_device(...)`` -> a SimulatedDevice connected in-process to the real ASGI app.
    Every device is disconnected at the end, so no consumer is left waiting on the channel layer:
    one cancelled by the closing event loop instead can hang in a Redis receive (channels-redis)."""
    from channels.testing import WebsocketCommunicator

    from loadtest.simulated_device import SimulatedDevice
    from xiaozhi.asgi import application

    devices = []

    async def connect(device_id=None, *, client_id=None, headers=None, hello=True, binary_version=1, token="",
                      path="/xiaozhi/v1/", answers_mcp=True):
        """``client_id``: the same one again for a reconnect (a device is bound to its first Client-Id).
        ``answers_mcp=False``: the device advertises MCP but the test answers the server's requests."""
        device = SimulatedDevice(device_id, client_id=client_id, binary_version=binary_version)
        device.answers_mcp = answers_mcp
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
    for device in devices:
        try:
            async with asyncio.timeout(5):
                await device.close()
        except Exception:  # noqa: BLE001 - already closed by the test or by the server
            pass


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """``with start_server("name", XIAOZHI_X="1", ...) as server:`` the production server process
    (``loadtest.server.server_process``) with this run's environment (its DATABASE_URL and REDIS_URL
    if set, else a SQLite file of its own), a data folder of its own and the given overrides;
    ``server.base``, ``.host``, ``.ws_url``, ``.pid``, ``.rss()``, ``.log_tail()``."""
    import contextlib

    from loadtest.server import ServerDidNotStart, server_process

    @contextlib.contextmanager
    def start(name: str, *, startup_timeout: float = 180, **overrides):
        env = dict(os.environ)
        if not env.get("DATABASE_URL"):
            env["SQLITE_PATH"] = str(tmp_path_factory.mktemp(name) / "db.sqlite3")
        env.setdefault("XIAOZHI_DATA_DIR", str(tmp_path_factory.mktemp(f"{name}-data")))
        env.update({k: str(v) for k, v in overrides.items()})
        try:
            with server_process(env, tmp_path_factory.mktemp(f"{name}-logs") / "server.log", startup_timeout) as server:
                yield server
        except ServerDidNotStart as exc:
            pytest.fail(str(exc))

    return start


@pytest.fixture(scope="session", autouse=True)
def celery_voice_worker(tmp_path_factory):
    """With XIAOZHI_WORKER_BACKEND=celery: real Celery workers serving this run's voice queues (and
    the seam tests' probe operations), started once and stopped at the end. Their broker and channel
    layer are this run's REDIS_URL."""
    from django.conf import settings

    if settings.XIAOZHI_WORKER_BACKEND != "celery":
        yield None
        return
    import shlex
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import voice.tests.probe_operations  # noqa: F401 - the same probes on this side of the seam
    from voice.management.commands.voice_worker import worker_argv

    prefix = settings.XIAOZHI_WORKER_QUEUE_PREFIX
    env = dict(os.environ, XIAOZHI_WORKER_QUEUE_PREFIX=prefix, XIAOZHI_MONITORING_SCHEDULER="off")
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    log = open(log_path, "w+")
    # The voice queues as production runs them (`manage.py voice_worker`: one process per service,
    # each with performance.yaml's max_concurrent), and one worker for the seam tests' "test" queue
    # taking one call at a time, like the in-process "test" services, so both backends pass the same tests.
    voice = [sys.executable, "manage.py", "voice_worker", "asr", "llm", "tts",
             "--include=voice.tests.probe_operations", "--quiet-cluster"]
    probe = [sys.executable, "-m", "celery", "-A", "xiaozhi",
             *worker_argv("test", concurrency=1, include=["voice.tests.probe_operations"], quiet_cluster=True)]
    process = subprocess.Popen(
        ["sh", "-c", f"{shlex.join(probe)} & exec {shlex.join(voice)}"],
        cwd=Path(__file__).resolve().parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180  # the workers load and warm their models before they are ready
    while log_path.read_text().count("ready.") < 4:
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the Celery voice workers did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    yield process
    os.killpg(process.pid, signal.SIGTERM)  # the voice workers and the test-queue worker
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()

"""Start a local server to measure: Daphne on a free port with its own migrated SQLite database.

Named configurations: ``bundled`` (the models shipped with the project, as configured) and
``fake`` (zero-latency fake ASR/LLM/TTS, to find the server's own ceiling without models).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROFILES = {
    "bundled": {},
    "fake": {"XIAOZHI_ASR_PROVIDER": "fake", "XIAOZHI_LLM_PROVIDER": "fake", "XIAOZHI_TTS_PROVIDER": "fake"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDidNotStart(RuntimeError):
    """The server process exited or did not answer ``/health`` in time; the message ends with its log."""


@dataclass
class ServerProcess:
    """A running ``python -m xiaozhi.server`` on 127.0.0.1."""

    process: subprocess.Popen
    port: int
    log_path: Path
    env: dict  # the environment it runs with (e.g. to run manage.py on its database)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/xiaozhi/v1/"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def server_process(env: Mapping[str, str], log_path: Path, startup_timeout: float = 180,
                   migrate: bool = True, root: Path = ROOT) -> Iterator[ServerProcess]:
    """The production server process (``python -m xiaozhi.server``, as ``make run`` starts it) on a
    free port with ``env``, its database migrated first; yielded once ``/health`` answers 200,
    stopped on exit. The one way the load test, the benchmarks and the tests start a server.
    ``root``: the checkout to run (a benchmark compares against an older one)."""
    import httpx

    if migrate:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=root, env=dict(env), check=True,
                       capture_output=True)
    port = free_port()
    log = open(log_path, "w+")
    process = subprocess.Popen([sys.executable, "-m", "xiaozhi.server", "-b", "127.0.0.1", "-p", str(port)],
                               cwd=root, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    running = ServerProcess(process, port, Path(log_path), dict(env))
    try:
        deadline = time.monotonic() + startup_timeout  # models load and warm before the port opens
        while True:
            if process.poll() is not None:
                raise ServerDidNotStart(f"the server exited early:\n{running.log_tail()}")
            try:
                if httpx.get(f"{running.base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerDidNotStart(f"the server did not start in time:\n{running.log_tail()}")
            time.sleep(0.3)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@contextlib.contextmanager
def local_server(profile: str = "bundled", env: dict | None = None, startup_timeout: float = 180, log_path=None,
                 on_start=None):
    """Yield the base URL of a fresh server with its own SQLite database; stop it on exit.
    ``on_start(process, workdir)`` is called once it serves (a soak samples the process, a test
    reads its database)."""
    workdir = Path(tempfile.mkdtemp(prefix="xiaozhi-loadtest-"))
    environ = dict(os.environ, SQLITE_PATH=str(workdir / "db.sqlite3"), XIAOZHI_DATA_DIR=str(workdir))
    environ.pop("DATABASE_URL", None)
    # Every simulated device comes from 127.0.0.1, and the load test reads /api/performance: the
    # per-address limits and the monitoring token are for the open internet, not this local server.
    environ.update(XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1", XIAOZHI_MONITORING_PUBLIC="true")
    environ.update(PROFILES[profile])
    environ.update(env or {})
    with server_process(environ, Path(log_path or workdir / "daphne.log"), startup_timeout) as running:
        if on_start is not None:
            on_start(running.process, workdir)
        yield running.base

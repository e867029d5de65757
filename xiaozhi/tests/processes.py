"""Real processes a fault test starts and stops itself: a private Redis, a private MariaDB and the
server (``python -m xiaozhi.server``), each on a free port and never the machine's shared instances
on 3306/6379, so a test can kill and restart them without touching anyone else's data.

The server runs the fake models (the faults are in storage and transport, not in the models) and
publishes its figures openly (``XIAOZHI_MONITORING_PUBLIC``) for the test to read.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loadtest.server import free_port

ROOT = Path(__file__).resolve().parents[2]
FAKE_MODELS = {"XIAOZHI_ASR_PROVIDER": "fake", "XIAOZHI_LLM_PROVIDER": "fake", "XIAOZHI_TTS_PROVIDER": "fake"}


def _wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} in {timeout} s")


def _stop(process: subprocess.Popen | None, sig=signal.SIGTERM, wait: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class PrivateRedis:
    """``redis-server`` on a free port, in memory only; ``stop()`` then ``start()`` is an outage."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, "redis-server")

    def stop(self) -> None:
        _stop(self.process, signal.SIGKILL)
        self.process = None


class PrivateMariaDB:
    """``mariadbd`` with its own data directory and a free port; root without a password."""

    def __init__(self, workdir: Path, database: str = "xiaozhi"):
        self.datadir = workdir / "data"
        self.socket = workdir / "mariadb.sock"
        self.log = workdir / "mariadb.log"
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/{database}"
        self.database = database
        self.process: subprocess.Popen | None = None
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={self.datadir}",
             f"--port={self.port}", f"--socket={self.socket}", "--bind-address=127.0.0.1", "--user=root",
             "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
             "--skip-name-resolve", f"--log-error={self.log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, "mariadbd", timeout=60)
        subprocess.run(["mariadb", "-h127.0.0.1", f"-P{self.port}", "-uroot", "-e",
                        f"CREATE DATABASE IF NOT EXISTS {self.database} CHARACTER SET utf8mb4"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        _stop(self.process, signal.SIGKILL)
        self.process = None


class RestartableServer:
    """``python -m xiaozhi.server`` with the fake models, on the given storage (SQLite by default),
    that a fault test can stop, kill and start again on the same port (``loadtest.server.server_process``
    is the one-shot form the other tests use)."""

    def __init__(self, workdir: Path, env: dict | None = None, database_url: str = "", redis_url: str = ""):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/xiaozhi/v1/"
        self.log_path = workdir / f"server-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SQLITE_PATH")}
        environ.update(FAKE_MODELS, XIAOZHI_PRELOAD_MODELS="false", XIAOZHI_MONITORING_SCHEDULER="off",
                       XIAOZHI_WORKER_BACKEND="local", XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1",
                       XIAOZHI_MONITORING_PUBLIC="true", XIAOZHI_DATA_DIR=str(workdir))
        if database_url:
            environ["DATABASE_URL"] = database_url
        else:
            environ["SQLITE_PATH"] = str(workdir / "db.sqlite3")
        if redis_url:
            environ["REDIS_URL"] = redis_url
        environ.update(env or {})
        self.env = environ
        self.process: subprocess.Popen | None = None
        self._log = None

    def migrate(self) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=self.env, check=True,
                       capture_output=True)

    def start(self, timeout: float = 90) -> None:
        self._log = open(self.log_path, "a+")
        self.process = subprocess.Popen([sys.executable, "-m", "xiaozhi.server", "-b", "127.0.0.1", "-p", str(self.port)],
                                        cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the server did not start:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                time.sleep(0.3)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: no finally, no disconnect, what a crash or the OOM killer does."""
        _stop(self.process, signal.SIGKILL)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def figures(self) -> dict:
        """This process's own live figures (gauges and counters), from the open performance API."""
        return httpx.get(f"{self.base}/api/performance/", timeout=10).json()

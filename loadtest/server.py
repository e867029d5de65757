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


@contextlib.contextmanager
def local_server(profile: str = "bundled", env: dict | None = None, startup_timeout: float = 180, log_path=None,
                 on_start=None):
    """Yield the base URL of a fresh server; stop it on exit. ``on_start(process, workdir)`` is called
    once it serves (a soak samples the process, a test reads its database)."""
    import httpx

    workdir = Path(tempfile.mkdtemp(prefix="xiaozhi-loadtest-"))
    environ = dict(os.environ, SQLITE_PATH=str(workdir / "db.sqlite3"), XIAOZHI_DATA_DIR=str(workdir))
    environ.pop("DATABASE_URL", None)
    # Every simulated device comes from 127.0.0.1, and the load test reads /api/performance: the
    # per-address limits and the monitoring token are for the open internet, not this local server.
    environ.update(XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1", XIAOZHI_MONITORING_PUBLIC="true")
    environ.update(PROFILES[profile])
    environ.update(env or {})
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=environ, check=True,
                   capture_output=True)
    port = free_port()
    log = open(log_path or workdir / "daphne.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "xiaozhi.server", "-b", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server exited early:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time")
            time.sleep(0.5)
        if on_start is not None:
            on_start(process, workdir)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()

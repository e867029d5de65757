"""``manage.py voice_worker asr llm tts [vllm]``: Celery workers for the voice services, one process each.

Why not one worker for every queue: a Celery worker has one concurrency for all the queues it
consumes, so a worker with 4 threads on ``voice.asr,voice.llm,voice.tts`` runs up to 4 model calls of
any mix at once, e.g. two Whisper calls beside the LLM and the TTS of an answer already playing, and
the cores are oversubscribed (measured on 2 cores at 10 devices: 3.2 underruns a minute against
none, TTFA p95 17.4 s against 13.6 s; benchmarks/README.md). One process per service, taking ``services.<name>.max_concurrent`` calls at once
(from ``performance.yaml``, as the in-process backend does), keeps each service within its limit, and
each process loads only its own model.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from voice.workers.celery_service import REMOTE_SERVICES, queue_name

RESTART_BACKOFF = (1.0, 30.0)  # seconds before a dead worker is started again: first, and at most
HEALTHY_SECONDS = 60.0  # a worker that ran this long before dying is restarted after the first backoff


def worker_argv(service: str, *, concurrency: int | None = None, include: list[str] | None = None,
                loglevel: str = "info", quiet_cluster: bool = False) -> list[str]:
    """The ``celery worker`` arguments for one voice service."""
    from voice.conf import service_limits

    slots = concurrency or service_limits(service).max_concurrent
    argv = ["worker", "-Q", queue_name(service), "--pool", "threads", "--concurrency", str(slots),
            "-n", f"{settings.XIAOZHI_WORKER_QUEUE_PREFIX}-{service}@%h", "--loglevel", loglevel]
    for module in include or []:
        argv += ["-I", module]
    if quiet_cluster:  # no gossip/mingle/heartbeat: faster start, for benchmarks and tests
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv


class Command(BaseCommand):
    help = "Run Celery workers for voice services (asr, llm, tts, vllm), one process per service, each with " \
           "performance.yaml's max_concurrent for it as its concurrency."

    def add_arguments(self, parser):
        parser.add_argument("services", nargs="+", choices=REMOTE_SERVICES)
        parser.add_argument("--concurrency", type=int, help="calls at once, instead of max_concurrent (one service only)")
        parser.add_argument("--include", action="append", default=[], help="extra module with operations (-I)")
        parser.add_argument("--loglevel", default="info")
        parser.add_argument("--quiet-cluster", action="store_true", help="--without-gossip/mingle/heartbeat")

    def handle(self, *args, services, concurrency, include, loglevel, quiet_cluster, **options):
        services = list(dict.fromkeys(services))
        if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
            raise CommandError(f"voice workers need Redis as broker and channel layer: set REDIS_URL "
                               f"(CELERY_BROKER_URL is {settings.CELERY_BROKER_URL!r})")
        if len(services) == 1:
            from xiaozhi.celery import app

            app.worker_main(worker_argv(services[0], concurrency=concurrency, include=include, loglevel=loglevel,
                                        quiet_cluster=quiet_cluster))
            return
        if concurrency:
            raise CommandError("--concurrency applies to one service; run one command per service")
        self._supervise(services, include, loglevel, quiet_cluster)

    def _supervise(self, services, include, loglevel, quiet_cluster) -> None:
        """Several services: a child process each. A child that dies (killed, out of memory) is
        started again after a short backoff while the others carry on, and its heartbeat is
        withdrawn at once, so ``/health`` says the service is down instead of "live" for the
        heartbeat's TTL. On SIGTERM/SIGINT every child is stopped."""
        from voice.workers import heartbeat

        manage = str(Path(settings.BASE_DIR) / "manage.py")
        extra = [f"--include={m}" for m in include] + [f"--loglevel={loglevel}"] + (["--quiet-cluster"] if quiet_cluster else [])

        def spawn(service):
            return subprocess.Popen([sys.executable, manage, "voice_worker", service, *extra])

        children = {service: spawn(service) for service in services}
        born = {service: time.monotonic() for service in services}
        backoff = {service: RESTART_BACKOFF[0] for service in services}
        restart_at: dict[str, float] = {}
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True
            for child in children.values():
                if child.poll() is None:
                    child.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while not stopping:
                time.sleep(0.5)
                now = time.monotonic()
                for service, child in list(children.items()):
                    if stopping:
                        break
                    if child.poll() is not None and service not in restart_at:
                        heartbeat.withdraw(child.pid)
                        if now - born[service] > HEALTHY_SECONDS:
                            backoff[service] = RESTART_BACKOFF[0]  # it had been fine: no long wait
                        restart_at[service] = now + backoff[service]
                        self.stderr.write(f"voice worker {service} (pid {child.pid}) ended with {child.returncode}; "
                                          f"starting it again in {backoff[service]:.0f} s")
                        backoff[service] = min(backoff[service] * 2, RESTART_BACKOFF[1])
                    elif service in restart_at and now >= restart_at[service]:
                        del restart_at[service]
                        children[service], born[service] = spawn(service), now
        finally:
            stop()
            for child in children.values():
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                heartbeat.withdraw(child.pid)

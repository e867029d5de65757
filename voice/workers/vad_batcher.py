"""How a session's uplink packets reach the VAD: alone, or scored together with other sessions'.

One onnxruntime run of Silero costs nearly the same for one 32 ms chunk as for dozens (about
0.2 ms against 0.06 ms a chunk in a batch of 64 on this project's machines), so with many devices
listening, scoring each session's chunks on its own spends the VAD thread on per-run overhead.

``XIAOZHI_VAD_BATCHING`` picks the path:

* ``cross_session`` (default): sessions hand their packet batches to their event loop's
  ``VADBatcher``. One call on the VAD service decodes every waiting session's packets, scores all
  their chunks in shared model runs (at most ``XIAOZHI_VAD_MAX_BATCH`` sessions a run), and runs each
  session's utterance logic. While one cycle runs, the next one's jobs gather, so batches grow with
  load and an idle server adds no wait.
  Under overload the cheapest, least valuable work goes first: sessions with speech in progress
  (or voice-like audio within a second, or push-to-talk: ``Listener.hot``) enter each cycle first
  and are never shed; the other sessions follow, the longest unheard first, and of a noise-only
  session's packets that waited longer than ``XIAOZHI_VAD_SHED_AFTER_MS`` only the newest
  ``MIN_DECODED`` are decoded, the older ones shed: kept raw in its pre-roll, decoded only if speech
  starts right after them, and counted (``vad_shed_packets``).
  A hot session never waits for a cycle under way either: its job then runs at once in a cycle of
  its own (the hot lane, on the VAD service's second thread, ahead of anything queued there). Waiting
  meant the rest of that cycle and then its own whole cycle, every batch, ~2 cycles of lag on the one
  session someone is talking to (``vad_hot_lane_jobs`` counts them).
  Work a speaking user waits for comes first on the CPU and the GIL too. While it runs on a VAD
  thread (a hot-lane cycle, the end-of-turn model's call on a pause: ``urgent``), the listeners'
  cycle under way sleeps before each noise-only session, 0.5 ms at a time and at most
  ``XIAOZHI_VAD_YIELD_MS`` of the clock a cycle. Without that, the listeners' cycle shares the 2
  cores with that work, and every GIL hand-over between the threads can wait a switch interval: the
  end-of-turn call ran ~1.5-2x slower at 400 listening devices. The listeners' packets only wait
  (``vad_yield_ms``: the time given up).
* ``session``: one VAD-service call per session batch, one model run per chunk.
* ``packet``: the naive baseline: one VAD-service call per packet, one model run per chunk.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import threading
import time
import weakref
from dataclasses import dataclass, field

from voice import live_stats
from voice.pipeline.listener import DecodedBatch, Listener, SpeechStarted, Utterance
from voice.workers import InProcessService, ServiceBusy
from voice.workers.deadline_executor import FIRST

MODES = ("cross_session", "session", "packet")
# Small cycles: a session with speech in progress waits for the cycle under way before its own turn, so
# the cycle's length is added to its lag (benchmarks/README.md "Listening under load": with 400 devices
# listening, an asking device's TTFA p50 was ~1.0 s at 256 sessions / 1024 packets a cycle, 0.44-0.54 s
# at 128 / 256; at 64 / 128 the loop's round trip per cycle made it worse again).
MAX_SESSIONS_PER_CYCLE = 128
# Bounds one cycle's work (~50 ms of one core at ~0.2 ms a packet), so a cycle never nears the VAD
# service's timeout: a timed-out cycle keeps the thread busy, the next one waits behind it and times
# out too, and the server stops hearing anyone. Under overload the backlog waits in the sessions'
# bounded queues instead (their oldest packets are dropped, and counted).
MAX_PACKETS_PER_CYCLE = 256
MAX_WAITING_JOBS = 4096  # one job per session is the norm; beyond this the batcher refuses (busy)
# A noise-only session's stale job keeps this many of its newest packets to decode (>= the listener's
# START_CHUNKS of 32 ms), so speech that has begun is still heard in them.
MIN_DECODED = 3

Events = list[SpeechStarted | Utterance]


async def hear(listener: Listener, packets: list[tuple[bytes, float]], owner: str | None = None) -> Events:
    """Decode, VAD and cut ``packets`` (``(payload, arrival)`` pairs) of one session, off the loop,
    the way ``XIAOZHI_VAD_BATCHING`` says."""
    from django.conf import settings

    mode = settings.XIAOZHI_VAD_BATCHING
    if mode == "cross_session":
        return await batcher().submit(listener, packets)
    service = _vad_service()
    if mode == "session":
        return await service.run(listener.feed, packets, owner=owner)
    events: Events = []
    for packet in packets:
        events += await service.run(listener.feed, [packet], owner=owner)
    return events


def urgent(fn):
    """``fn`` as work a speaking user waits for (``Urgency.wrap``), to run on the VAD service: the
    listeners' cycles step aside while it runs. Unchanged when the sessions are not batched."""
    from django.conf import settings

    if settings.XIAOZHI_VAD_BATCHING == "cross_session":
        return batcher().urgency.wrap(fn)
    return fn


def _vad_service() -> InProcessService:
    from voice.workers import services

    return services()["vad"]  # always a LocalService (make_service): the VAD keeps per-session state


async def _run_on_vad_service(fn, *args, first: bool = False):
    """``first``: ahead of every call queued on the service."""
    return await _vad_service().run(fn, *args, deadline=FIRST if first else None)


# -- one cycle, on the VAD thread ---------------------------------------------------------------------------
class Urgency:
    """How much work someone is waiting for is running now on the VAD threads: counted where it
    runs (``wrap``, under a lock), read by the listeners' cycles without one (an int read). Counted
    only while running, not while queued: with one VAD thread, queued urgent work would otherwise
    wait behind a cycle that steps aside for it."""

    STEP = 0.0005  # seconds a listeners' cycle sleeps at a time while urgent work runs

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def wrap(self, fn):
        """``fn`` as urgent work: counted while it runs (on whatever thread runs it)."""
        return functools.partial(self._run, fn)

    def _run(self, fn, *args, **kwargs):
        with self._lock:
            self.count += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.count -= 1

    def step_aside(self, budget: float) -> float:
        """On a VAD thread: sleep (GIL and core free) while urgent work runs, up to ``budget``
        seconds of the clock (each sleep may overrun: the GIL is taken back after it); returns the
        seconds given up."""
        started = time.monotonic()
        deadline = started + budget
        while self.count and time.monotonic() < deadline:
            time.sleep(self.STEP)
        return time.monotonic() - started


def run_cycle(jobs: list[tuple], max_batch: int, urgency: Urgency | None = None, yield_for: float = 0.0) -> list[Events | Exception]:
    """Decode every job's packets, score all their chunks together, cut utterances. A job is
    ``(listener, packets)`` or ``(listener, packets, shed)``: ``shed`` are older packets of that
    session to keep undecoded (``Listener.shed``). A failure in one session's step is returned as
    that job's result, so it cannot fail the others. With ``urgency``, the cycle steps aside
    before each noise-only session while urgent work runs, ``yield_for`` seconds at most. A session
    with speech in progress in the same cycle (its job was queued before it turned hot, or no cycle
    was under way when it came) then waits for its result up to that long too: the onset of speech,
    not its end, which the hot lane carries (measured: with no stepping aside in such cycles, the
    asking device's TTFA at 400 listening was 1.34-1.56x idle instead of 1.22-1.31x)."""
    decoded: list[DecodedBatch | Exception] = []
    given_up = 0.0
    for listener, packets, *shed in jobs:
        if urgency is not None and urgency.count and not listener.hot and given_up < yield_for:
            given_up += urgency.step_aside(yield_for - given_up)
        try:
            if shed and shed[0]:
                listener.shed(shed[0])
            decoded.append(listener.decode(packets))
        except Exception as exc:  # noqa: BLE001 - handed back to that session
            decoded.append(exc)
    scores: dict[int, list[list[float]] | Exception] = {}
    by_model: dict[int, list[int]] = collections.defaultdict(list)
    for i, batch in enumerate(decoded):
        if isinstance(batch, DecodedBatch) and batch.to_score:
            by_model[id(jobs[i][0].vad)].append(i)
    chunks = runs = 0
    for members in by_model.values():
        model = jobs[members[0]][0].vad
        streams = [jobs[i][0].vad_stream for i in members]
        pcms = [decoded[i].to_score for i in members]
        grouped = getattr(model, "probabilities_grouped", None)
        try:
            if grouped is not None:
                results = grouped(streams, pcms, max_batch=max_batch)
                for start in range(0, len(results), max_batch):
                    runs += max(sum(len(p) for p in per_packet) for per_packet in results[start : start + max_batch])
            else:  # a VAD without batching: each stream on its own
                results = [[stream.probabilities(pcm) for pcm in packet_pcms] for stream, packet_pcms in zip(streams, pcms)]
                runs += sum(len(p) for per_packet in results for p in per_packet)
        except Exception:  # noqa: BLE001 - find whose state broke the shared run: score each alone
            results = []
            for stream, packet_pcms in zip(streams, pcms):
                try:
                    results.append([stream.probabilities(pcm) for pcm in packet_pcms])
                    runs += sum(len(p) for p in results[-1])
                except Exception as exc:  # noqa: BLE001 - that session's part fails, not the batch
                    results.append(exc)
            live_stats.incr("vad_batch_fallbacks")
        for i, per_packet in zip(members, results):
            if isinstance(per_packet, Exception):
                scores[i] = per_packet
                continue
            scores[i] = per_packet
            chunks += sum(len(p) for p in per_packet)
    out: list[Events | Exception] = []
    for i, batch in enumerate(decoded):
        result = scores.get(i, [])
        if isinstance(batch, Exception) or isinstance(result, Exception):
            out.append(batch if isinstance(batch, Exception) else result)
            continue
        try:
            out.append(jobs[i][0].apply(batch, result))
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    live_stats.incr("vad_chunks", chunks)
    live_stats.incr("vad_model_runs", runs)
    live_stats.incr("vad_batch_cycles")
    live_stats.incr("vad_batch_sessions", len(jobs))
    if given_up:
        live_stats.observe("vad_yield_ms", given_up * 1000)
    return out


# -- the batcher, one per event loop -------------------------------------------------------------------------
@dataclass
class _Job:
    listener: Listener
    packets: list[tuple[bytes, float]]
    future: asyncio.Future
    shed: list[tuple[bytes, float]] = field(default_factory=list)


class VADBatcher:
    """Gathers sessions' packet batches and runs them through the VAD service a cycle at a time.

    Owns one task, alive only while jobs wait (so an idle loop holds nothing); ``close`` cancels
    it and fails whatever still waits. A session has at most one job in a cycle: a second job of
    the same session waits for the next cycle, so its packets stay in order."""

    def __init__(self, max_batch: int, dispatch=_run_on_vad_service, max_waiting: int = MAX_WAITING_JOBS,
                 max_sessions_per_cycle: int = MAX_SESSIONS_PER_CYCLE, max_packets_per_cycle: int = MAX_PACKETS_PER_CYCLE,
                 shed_after: float = 0.0, hot_lane: bool = True, yield_for: float = 0.0):
        """``shed_after`` (seconds, 0: never shed): how long a noise-only session's packets may wait
        before all but its newest ``MIN_DECODED`` are shed. ``hot_lane``: whether a hot session's job
        skips a cycle under way (module docstring). ``yield_for`` (seconds, 0: never): how long a
        cycle of noise-only sessions may wait for ``urgent`` work to end."""
        self.max_batch = max_batch
        self.shed_after = shed_after
        self.max_packets_per_cycle = max_packets_per_cycle
        self.max_waiting = max_waiting
        self.max_sessions_per_cycle = max_sessions_per_cycle
        self._dispatch = dispatch
        self._jobs: collections.deque[_Job] = collections.deque()
        self._task: asyncio.Task | None = None
        self._cycle: list[_Job] = []  # the cycle under way (empty between cycles)
        self._hot: collections.deque[_Job] = collections.deque()  # the hot lane's waiting jobs
        self._hot_task: asyncio.Task | None = None
        self._hot_cycle: list[_Job] = []
        self.hot_lane = hot_lane
        self.yield_for = yield_for
        self.urgency = Urgency()
        self.closed = False

    @property
    def waiting(self) -> int:
        return len(self._jobs) + len(self._hot)

    async def submit(self, listener: Listener, packets: list[tuple[bytes, float]]) -> Events:
        if self.closed:
            raise ServiceBusy("the VAD batcher is shut down")
        if self.waiting >= self.max_waiting:
            live_stats.incr("vad_batcher_rejected")
            raise ServiceBusy(f"vad batcher is full ({self.waiting} session batches waiting)")
        loop = asyncio.get_running_loop()
        job = _Job(listener, packets, loop.create_future())
        if self._jumps(listener):
            live_stats.incr("vad_hot_lane_jobs")
            self._hot.append(job)
            if self._hot_task is None or self._hot_task.done():
                self._hot_task = loop.create_task(self._run_hot(), name="vad-batcher-hot")
        else:
            self._jobs.append(job)
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._run(), name="vad-batcher")
        return await job.future

    def _jumps(self, listener: Listener) -> bool:
        """Whether this job goes to the hot lane. A session's jobs stay in one lane while any of them
        waits or runs (each lane runs its cycles one after another, so its packets stay in order:
        the stop of a push-to-talk drains the queue while the input loop's batch is still out);
        a session with none out goes there when it is hot and a cycle is under way."""
        if any(job.listener is listener for job in itertools.chain(self._hot, self._hot_cycle)):
            return True  # the lane is a few hot sessions: cheap to scan on every submit
        if not (self.hot_lane and self._cycle and listener.hot):
            return False  # most jobs: no scan of the ordinary queue (hundreds) on the loop
        return not any(job.listener is listener for job in itertools.chain(self._cycle, self._jobs))

    def _next_cycle(self) -> list[_Job]:
        """Hot sessions first (in arrival order), then the others, the longest unheard first; at
        most one job per session, within the cycle's session and packet bounds."""
        seen: set[int] = set()
        hot: list[_Job] = []
        cold: list[_Job] = []
        later: list[_Job] = []
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.done():  # its session stopped waiting (closed)
                continue
            if id(job.listener) in seen:
                later.append(job)
                continue
            seen.add(id(job.listener))
            (hot if job.listener.hot else cold).append(job)
        cold.sort(key=lambda j: j.listener.heard_until)
        cycle: list[_Job] = []
        rest: list[_Job] = []
        packets = 0
        stale_before = time.monotonic() - self.shed_after
        for i, job in enumerate(hot + cold):
            if len(cycle) >= self.max_sessions_per_cycle or packets >= self.max_packets_per_cycle:
                rest.append(job)
                continue
            if self.shed_after and i >= len(hot):  # a noise-only session's job
                self._shed_stale(job, stale_before)
            cycle.append(job)
            packets += len(job.packets)
        self._jobs.extend(rest)
        self._jobs.extend(later)
        return cycle

    @staticmethod
    def _shed_stale(job: _Job, stale_before: float) -> None:
        stale = 0
        limit = len(job.packets) - MIN_DECODED
        while stale < limit and job.packets[stale][1] < stale_before:
            stale += 1
        if stale:
            job.shed, job.packets = job.packets[:stale], job.packets[stale:]
            live_stats.incr("vad_shed_packets", stale)

    async def _run(self) -> None:
        try:
            while self._jobs:
                cycle = self._cycle = self._next_cycle()
                if cycle:
                    await self._run_one(cycle)
                self._cycle = []
        finally:
            if self.closed:
                self._fail_waiting()

    async def _run_hot(self) -> None:
        try:
            while self._hot:
                cycle = self._hot_cycle = []
                seen: set[int] = set()
                later: list[_Job] = []
                while self._hot and len(cycle) < self.max_sessions_per_cycle:
                    job = self._hot.popleft()
                    if job.future.done():  # its session stopped waiting (closed)
                        continue
                    if id(job.listener) in seen:  # one job per session a cycle: the next waits
                        later.append(job)
                        continue
                    seen.add(id(job.listener))
                    cycle.append(job)
                self._hot.extendleft(reversed(later))
                if cycle:
                    await self._run_one(cycle, first=True)
                self._hot_cycle = []
        finally:
            if self.closed:
                self._fail_waiting()

    async def _run_one(self, cycle: list[_Job], first: bool = False) -> None:
        jobs = [(j.listener, j.packets, j.shed) for j in cycle]
        try:
            if first:  # the hot lane: urgent itself
                results = await self._dispatch(self.urgency.wrap(run_cycle), jobs, self.max_batch, first=True)
            else:
                step_aside = functools.partial(run_cycle, urgency=self.urgency, yield_for=self.yield_for)
                results = await self._dispatch(step_aside, jobs, self.max_batch, first=False)
        except Exception as exc:  # noqa: BLE001 - busy or timed out: every session of the cycle hears it
            results = [exc] * len(cycle)
        for job, result in zip(cycle, results):
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _fail_waiting(self) -> None:
        jobs = [*self._cycle, *self._jobs, *self._hot_cycle, *self._hot]
        self._cycle, self._hot_cycle = [], []
        self._jobs.clear()
        self._hot.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(ServiceBusy("the VAD batcher is shut down"))

    async def close(self) -> None:
        self.closed = True
        tasks = [t for t in (self._task, self._hot_task) if t is not None and not t.done()]
        self._task = self._hot_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_waiting()


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VADBatcher] = weakref.WeakKeyDictionary()


def batcher() -> VADBatcher:
    """This event loop's batcher (a process may run several loops: tests do)."""
    from django.conf import settings

    loop = asyncio.get_running_loop()
    found = _batchers.get(loop)
    if found is None or found.closed:
        found = _batchers[loop] = VADBatcher(settings.XIAOZHI_VAD_MAX_BATCH, shed_after=settings.XIAOZHI_VAD_SHED_AFTER_MS / 1000,
                                             hot_lane=settings.XIAOZHI_VAD_HOT_LANE, yield_for=settings.XIAOZHI_VAD_YIELD_MS / 1000)
    return found

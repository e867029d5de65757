"""Per-device memory: what the user said about themselves, kept between sessions.

A session hands its turns to a ``SessionMemory``; every ``every_turns`` turns and when the session
closes it hands the dialogue so far to the process's ``MemoryUpdates`` queue and forgets it. The
queue, not the session, owns the work: the session object may be gone long before the update runs.
An update reads the stored memory, merges the dialogue into it and stores the result, bounded to
``max_chars``:

- ``llm``: the ``summarize_memory`` operation (``voice.workers.operations``) on the LLM service, only
  while that service has no active or queued call, so a reply never waits behind a memory; a busy
  LLM defers the update (retried every ``retry_seconds``, up to ``defer_seconds``, then given up
  with a log line and the ``memory_updates_expired`` counter: never lost silently).
- ``extract``: the user's own self-statements ("My name is Ana", "I love jazz") as short third-person
  facts, newest kept, with no model at all: for the bundled SmolLM2, whose summaries are not usable
  (benchmarks/README.md, "Memory").

The next session's system prompt carries the memory (``prompt_with_memory``).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from voice import live_stats
from voice.workers.admission import ServiceBusy

log = logging.getLogger(__name__)

MAX_DIALOGUE_TURNS = 20  # turns of one session (or of several coalesced updates) one update sees
MAX_UTTERANCE_CHARS = 500  # each side of a turn, as handed to the summary
MAX_FACT_CHARS = 80  # one extracted fact's value
# "auto": these get ``extract``: SmolLM2 is too small to summarise, the fake LLM (tests, load tests)
# answers anything with its script, and neither should spend an LLM slot at every session's end.
EXTRACTING_LLMS = frozenset({"smollm2", "fake"})

Dialogue = tuple[tuple[str, str], ...]  # (user, assistant) pairs, oldest first


def prompt_with_memory(system_prompt: str, memory: str) -> str:
    """The session's system prompt with the device's memory (third-person facts) right after it.
    No heading: with SmolLM2 the facts appended as they are were recalled in 10 of 10 trials, under
    a heading on a line of its own in 8 (benchmarks/README.md, "Memory")."""
    memory = (memory or "").strip()
    return f"{system_prompt} {memory}" if memory else system_prompt


def method_for(llm: str, setting: str = "auto") -> str:
    """``llm`` or ``extract`` for the LLM provider named ``llm``, as ``XIAOZHI_MEMORY_METHOD`` says."""
    if setting in ("llm", "extract"):
        return setting
    return "extract" if llm in EXTRACTING_LLMS else "llm"


def clip(text: str, max_chars: int) -> str:
    """At most ``max_chars``, cut after the last whole sentence that fits (else at a word)."""
    text = " ".join((text or "").split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if end > 0:
        return cut[: end + 1]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


# -- extraction (no model) -----------------------------------------------------------------------------------
# (pattern on one clause, whether it replaces the stored fact of its kind, third-person template). A
# replacing fact removes the stored sentence that starts as it does ("My name is Bob" after "My name is
# Ana"); likes and dislikes accumulate.
_LEAD = r"^(?:(?:hi|hello|hey|well|oh|so|and|but|also|actually|by the way)[,!]?\s+)*"
_FACTS: list[tuple[re.Pattern, bool, str]] = [
    (re.compile(_LEAD + r"(?:my name is|my name's|i am called|i'm called|call me)\s+(?P<v>.+)", re.I), True,
     "The user's name is {v}."),
    (re.compile(_LEAD + r"my favou?rite (?P<k>[a-z ]{2,30}?) is\s+(?P<v>.+)", re.I), True,
     "The user's favorite {k} is {v}."),
    (re.compile(_LEAD + r"i(?: really)? (?P<verb>love|like|enjoy|hate|dislike|prefer)\s+(?P<v>.+)", re.I), False,
     "The user {verb}s {v}."),
    (re.compile(_LEAD + r"i (?:don't|do not) like\s+(?P<v>.+)", re.I), False, "The user does not like {v}."),
    (re.compile(_LEAD + r"i live in\s+(?P<v>.+)", re.I), True, "The user lives in {v}."),
    (re.compile(_LEAD + r"(?:i am|i'm) from\s+(?P<v>.+)", re.I), True, "The user is from {v}."),
    (re.compile(_LEAD + r"(?:i am|i'm) (?P<v>\d{1,3}) years old", re.I), True, "The user is {v} years old."),
    (re.compile(_LEAD + r"i work as\s+(?P<v>.+)", re.I), True, "The user works as {v}."),
    (re.compile(_LEAD + r"i have (?P<v>(?:a|an|two|three|\d+) .+)", re.I), False, "The user has {v}."),
]
_CLAUSES = re.compile(r"[.!?;]+\s*|,?\s+(?:and|but)\s+(?=(?:i|i'm|my)\b)", re.I)
_FIRST_PERSON = re.compile(r"\b(my|me|i|i'm|myself)\b", re.I)
_SWAP = {"my": "their", "me": "them", "i": "they", "i'm": "they are", "myself": "themselves"}


def extract_facts(text: str) -> list[tuple[str | None, str]]:
    """(what it replaces, fact) for each self-statement in one utterance, in order: the first part
    is the start of the stored sentence this fact replaces ("The user's name is "), or None."""
    facts = []
    for clause in _CLAUSES.split(text or ""):
        clause = clause.strip(" ,")
        for pattern, replaces, template in _FACTS:
            match = pattern.match(clause)
            if not match:
                continue
            value = match.group("v").strip(" ,.!?\"'")
            value = _FIRST_PERSON.sub(lambda m: _SWAP[m.group(1).lower()], value)[:MAX_FACT_CHARS].strip()
            if value:
                parts = {k: v.lower() for k, v in match.groupdict().items() if k != "v" and v}
                head = template.split("{v}")[0].format(**parts)
                facts.append((head if replaces else None, template.format(v=value, **parts)))
            break
    return facts


def merge_extracted(old: str, dialogue: Dialogue, max_chars: int) -> str:
    """The old memory (possibly edited by hand) with the dialogue's new facts added: a replacing
    fact removes the sentence of the same kind, repeats are not added twice, the oldest sentences go
    first when the bound is reached."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", (old or "").strip()) if s]
    for user, _ in dialogue:
        for head, fact in extract_facts(user):
            if head:
                sentences = [s for s in sentences if not s.lower().startswith(head.lower())]
            if fact.lower() not in (s.lower() for s in sentences):
                sentences.append(fact)
    while len(sentences) > 1 and len(" ".join(sentences)) > max_chars:
        sentences.pop(0)
    return clip(" ".join(sentences), max_chars)


# -- the LLM's version ---------------------------------------------------------------------------------------
SUMMARY_INSTRUCTIONS = (
    "You keep a short memory about the user of a voice assistant. Rewrite the memory with what the user said "
    "about themselves in the dialogue: their name, likes, dislikes, family, home, work and preferences. Keep the "
    "facts of the old memory unless the user changed them. Leave out everything else (questions, requests, the "
    "assistant's answers). Write short third-person sentences such as \"The user's name is Sam.\", at most "
    "{max_chars} characters in all, and nothing else. If there is nothing to remember, write the old memory again."
)


def summary_messages(old: str, dialogue: Sequence[Sequence[str]], max_chars: int) -> list[dict]:
    lines = []
    for user, assistant in dialogue:
        lines.append(f"User: {user[:MAX_UTTERANCE_CHARS]}")
        if assistant:
            lines.append(f"Assistant: {assistant[:MAX_UTTERANCE_CHARS]}")
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(max_chars=max_chars)},
        {"role": "user", "content": f"Old memory: {old.strip() or '(empty)'}\n\nDialogue:\n" + "\n".join(lines)
         + "\n\nNew memory:"},
    ]


def clean_summary(text: str, old: str, max_chars: int) -> str:
    """The model's answer as a memory: no label or quotes, bounded; the old memory if it said nothing."""
    text = re.sub(r"^\s*(?:new memory|memory)\s*:\s*", "", text or "", flags=re.I).strip().strip("\"'").strip()
    return clip(text, max_chars) if text else clip(old, max_chars)


# -- the queue -----------------------------------------------------------------------------------------------
@dataclass
class MemoryJob:
    """One device's pending update: the dialogue not yet merged into its memory."""

    device_pk: int
    device_id: str
    llm: str  # provider name (voice.providers.registry)
    llm_model: str | None
    dialogue: Dialogue
    give_up_at: float = 0.0  # time.monotonic(); set by the queue
    attempts: int = 0


@dataclass
class MemoryStore:
    """The database steps (``devices.memory_records``), injected so this module needs no Django models."""

    load: Callable[[int], str | None]
    replace: Callable[[int, str, str], bool]


def default_store() -> MemoryStore:
    from devices import memory_records

    return MemoryStore(memory_records.load_memory, memory_records.replace_memory)


class MemoryUpdates:
    """The process's pending memory updates, at most ``max_pending`` devices, each run in the
    background on the loop that submitted it, oldest first. A device with an update still pending
    gets its new dialogue appended to it (one update, not two). The queue owns its worker task; a
    worker left behind on a closed loop (tests run one loop each) is replaced and its jobs kept."""

    def __init__(self, *, max_pending: int, defer_seconds: float, max_chars: int, method: str = "auto",
                 retry_seconds: float = 2.0, max_attempts: int = 3, services: Callable[[], dict] | None = None,
                 store: Callable[[], MemoryStore] | None = None):
        self.max_pending = max_pending
        self.defer_seconds = defer_seconds
        self.max_chars = max_chars
        self.method = method
        self.retry_seconds = retry_seconds
        self.max_attempts = max_attempts
        self._services = services
        self._store = store or default_store
        self._pending: collections.OrderedDict[int, MemoryJob] = collections.OrderedDict()
        self._worker: asyncio.Task | None = None
        self._running: MemoryJob | None = None

    @classmethod
    def from_settings(cls) -> MemoryUpdates:
        from django.conf import settings

        return cls(max_pending=settings.XIAOZHI_MEMORY_QUEUE_SIZE, defer_seconds=settings.XIAOZHI_MEMORY_DEFER_SECONDS,
                   max_chars=settings.XIAOZHI_MEMORY_MAX_CHARS, method=settings.XIAOZHI_MEMORY_METHOD)

    def pending(self) -> int:
        return len(self._pending) + (self._running is not None)

    def submit(self, job: MemoryJob) -> bool:
        """Queue ``job`` (call on the event loop; returns at once). False if the queue is full: the
        update is dropped, logged and counted (``memory_updates_dropped``)."""
        if not job.dialogue:
            return True
        job.give_up_at = time.monotonic() + self.defer_seconds
        waiting = self._pending.get(job.device_pk)
        if waiting is not None:
            job.dialogue = (waiting.dialogue + job.dialogue)[-MAX_DIALOGUE_TURNS:]
        elif len(self._pending) >= self.max_pending:
            live_stats.incr("memory_updates_dropped")
            log.warning("memory update of %s dropped: %d devices already wait (XIAOZHI_MEMORY_QUEUE_SIZE)",
                        job.device_id, len(self._pending))
            return False
        self._pending[job.device_pk] = job
        self._ensure_worker()
        return True

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending or running (tests; shutdown). False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                while self.pending():
                    self._ensure_worker()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            return False
        return True

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        worker = self._worker
        if worker is not None and not worker.done() and worker.get_loop() is loop:
            return
        if self._running is not None:  # its loop is gone: run it again here
            self._pending[self._running.device_pk] = self._running
            self._pending.move_to_end(self._running.device_pk, last=False)
            self._running = None
        self._worker = loop.create_task(self._work(), name="memory-updates")

    async def _work(self) -> None:
        retried: set[int] = set()  # devices retried since the last pause
        try:
            while self._pending:
                device_pk, job = next(iter(self._pending.items()))
                if device_pk in retried:  # every update left has been tried: wait before the next round
                    retried.clear()
                    await asyncio.sleep(self.retry_seconds)
                    continue
                del self._pending[device_pk]
                self._running = job
                outcome = await self._attempt(job)
                self._running = None
                if outcome != "retry":
                    continue
                if time.monotonic() >= job.give_up_at:
                    live_stats.incr("memory_updates_expired")
                    log.warning("memory update of %s given up after %.0f s (XIAOZHI_MEMORY_DEFER_SECONDS): "
                                "the LLM stayed busy or failed; %d turns not remembered", job.device_id,
                                self.defer_seconds, len(job.dialogue))
                else:
                    self._requeue(job)
                    retried.add(device_pk)
        except asyncio.CancelledError:
            left = len(self._pending) + (self._running is not None)
            if left:
                log.warning("%d memory updates not done: their event loop is closing", left)
            raise

    def _requeue(self, job: MemoryJob) -> None:
        """Back in line, behind the others (an update that needs no LLM is not held up by one that
        waits for it), with any dialogue of the device that arrived while it ran."""
        newer = self._pending.pop(job.device_pk, None)
        if newer is not None:
            job.dialogue = (job.dialogue + newer.dialogue)[-MAX_DIALOGUE_TURNS:]
            job.give_up_at = max(job.give_up_at, newer.give_up_at)
        self._pending[job.device_pk] = job

    async def _attempt(self, job: MemoryJob) -> str:
        """"done", "retry" (busy LLM, a failure, a concurrent edit) or "dropped"."""
        from channels.db import database_sync_to_async

        method = method_for(job.llm, self.method)
        try:
            store = self._store()
            if method == "llm":
                llm = self._llm_service()
                busy = llm.occupancy()
                if busy.get("active") or busy.get("queued"):
                    live_stats.incr("memory_updates_deferred")
                    return "retry"  # devices are waiting for replies: they come first
            old = await database_sync_to_async(store.load)(job.device_pk)
            if old is None:
                return "dropped"  # the device was deleted
            if method == "extract":
                new = merge_extracted(old, job.dialogue, self.max_chars)
            else:
                # Due an hour from now: any turn that queues meanwhile runs before it.
                answer = await llm.call("summarize_memory", job.llm, old, [list(t) for t in job.dialogue],
                                        self.max_chars, job.llm_model, owner=job.device_id,
                                        deadline=time.monotonic() + 3600)
                new = clean_summary(answer, old, self.max_chars)
            if new != old and not await database_sync_to_async(store.replace)(job.device_pk, old, new):
                return "retry"  # edited or cleared meanwhile: merge into what is there now
        except ServiceBusy:
            live_stats.incr("memory_updates_deferred")  # e.g. the device's own share, taken by its new session
            return "retry"
        except Exception as exc:  # noqa: BLE001 - a failed update is retried, then given up (logged)
            job.attempts += 1
            live_stats.incr("memory_updates_failed")
            log.warning("memory update of %s failed (attempt %d): %s: %s", job.device_id, job.attempts,
                        type(exc).__name__, exc)
            if job.attempts >= self.max_attempts:
                live_stats.incr("memory_updates_expired")
                log.warning("memory update of %s given up after %d failures; %d turns not remembered",
                            job.device_id, job.attempts, len(job.dialogue))
                return "dropped"
            return "retry"
        live_stats.incr("memory_updates")
        log.info("memory of %s updated (%s, %d turns, %d chars)", job.device_id, method, len(job.dialogue), len(new))
        return "done"

    def _llm_service(self):
        if self._services is not None:
            return self._services()["llm"]
        from voice.workers import services

        return services()["llm"]


_updates: MemoryUpdates | None = None


def updates() -> MemoryUpdates:
    """The process's queue, built from settings on first use."""
    global _updates
    if _updates is None:
        _updates = MemoryUpdates.from_settings()
    return _updates


@dataclass
class SessionMemory:
    """One session's side: collects its turns and hands them to the queue every ``every_turns``
    turns (0: only at the end) and at ``close``. Holds no task: nothing is lost with the session."""

    device_pk: int
    device_id: str
    llm: str
    llm_model: str | None = None
    every_turns: int = 10
    queue: Callable[[], MemoryUpdates] = updates
    _turns: list[tuple[str, str]] = field(default_factory=list)
    _closed: bool = False

    @classmethod
    def from_settings(cls, **values) -> SessionMemory:
        from django.conf import settings

        return cls(every_turns=settings.XIAOZHI_MEMORY_EVERY_TURNS, **values)

    def observe(self, user_text: str, reply_text: str = "") -> None:
        user_text = (user_text or "").strip()
        if not user_text:
            return
        self._turns.append((user_text[:MAX_UTTERANCE_CHARS], (reply_text or "").strip()[:MAX_UTTERANCE_CHARS]))
        del self._turns[:-MAX_DIALOGUE_TURNS]
        # A turn cut off by the disconnect is stored after ``close``: it goes straight to the queue.
        if self._closed or (self.every_turns and len(self._turns) >= self.every_turns):
            self._hand_over()

    def close(self) -> None:
        self._closed = True
        self._hand_over()

    def _hand_over(self) -> None:
        turns, self._turns = tuple(self._turns), []
        if turns:
            self.queue().submit(MemoryJob(self.device_pk, self.device_id, self.llm, self.llm_model, turns))

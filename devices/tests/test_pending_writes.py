"""The bounded retry buffer for database writes (devices/pending_writes.py), without a database: the
writes are callables that fail as an unreachable MySQL does, then succeed."""
import asyncio
import time

import pytest
from django import db

from devices.pending_writes import SESSION_CLOSE, TURN, PendingWrite, PendingWrites
from voice import live_stats

# The writes below touch no table, but database_sync_to_async closes stale connections around each call.
pytestmark = pytest.mark.django_db


def wait_until(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the writer thread did not get there")
        time.sleep(0.05)


class FlakyDatabase:
    """Refuses the first ``failures`` calls with the error mysqlclient raises for a lost server."""

    def __init__(self, failures: int):
        self.failures = failures
        self.written: list[str] = []

    def write(self, name: str):
        def run():
            if self.failures:
                self.failures -= 1
                raise db.OperationalError(2003, "Can't connect to MySQL server")
            self.written.append(name)
        return run


async def test_a_write_that_fails_is_retried_in_order_until_the_database_answers():
    live_stats.clear()
    database = FlakyDatabase(failures=3)
    writes = PendingWrites(capacity=10)
    assert not await writes.write(PendingWrite(TURN, database.write("turn 1"), "turn 1"))
    writes.submit(PendingWrite(SESSION_CLOSE, database.write("close 1"), "close 1"))
    wait_until(lambda: database.written == ["turn 1", "close 1"])
    wait_until(lambda: len(writes) == 0)
    figures = live_stats.snapshot()
    assert figures["counters"]["database_writes_retried"] == 2 and figures["counters"]["database_outages"] == 1
    assert figures["gauges"]["database_writes_pending"] == 0


async def test_a_cancelled_write_is_left_to_the_buffer():
    started = asyncio.Event()
    database = FlakyDatabase(failures=0)
    writes = PendingWrites(capacity=10)

    def slow():
        time.sleep(0.3)
        database.written.append("slow")

    async def caller():
        started.set()
        await writes.write(PendingWrite(SESSION_CLOSE, slow, "slow"))

    task = asyncio.create_task(caller())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wait_until(lambda: database.written == ["slow"] and len(writes) == 0)
    time.sleep(0.5)
    assert database.written == ["slow"]  # the retry found it written: no second copy


def test_when_full_the_oldest_turn_record_is_dropped_never_a_session_close():
    live_stats.clear()
    database = FlakyDatabase(failures=10**9)  # down for good: nothing leaves the buffer
    writes = PendingWrites(capacity=3)
    writes.submit(PendingWrite(SESSION_CLOSE, database.write("close"), "close"))
    writes.submit(PendingWrite(TURN, database.write("turn 1"), "turn 1"))
    writes.submit(PendingWrite(TURN, database.write("turn 2"), "turn 2"))
    writes.submit(PendingWrite(TURN, database.write("turn 3"), "turn 3"))
    assert [item.what for item in writes._items] == ["close", "turn 2", "turn 3"]
    assert live_stats.snapshot()["counters"]["database_writes_dropped"] == 1
    database.failures = 0  # the database returns: the writer thread drains and goes idle
    wait_until(lambda: database.written == ["close", "turn 2", "turn 3"])


async def test_a_write_the_database_refuses_for_good_is_logged_and_dropped_not_retried(caplog):
    live_stats.clear()
    writes = PendingWrites(capacity=10)

    def refused():
        raise db.IntegrityError(1452, "Cannot add or update a child row: a foreign key constraint fails")

    assert not await writes.write(PendingWrite(TURN, refused, "turn of a deleted device"))
    assert len(writes) == 0 and live_stats.snapshot()["counters"]["database_writes_failed"] == 1
    assert "turn of a deleted device" in caplog.text

"""Closing the session rows whose server process is gone (devices/session_owner.py), on the ORM: a
dead owner on this host, a reused pid, a stale heartbeat elsewhere, a live owner, our own rows."""
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import session_owner
from devices.models import Device, DeviceSession

pytestmark = pytest.mark.django_db
PERIOD = 30.0


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def row(name: str, beat_age: float = 0.0, **owner) -> DeviceSession:
    device = Device.objects.create(device_id=f"aa:00:00:00:00:{len(name):02x}{name[:1]}", online=True, activated=True)
    return DeviceSession.objects.create(device=device, session_id=uuid.uuid4(),
                                        heartbeat_at=timezone.now() - timedelta(seconds=beat_age), **owner)


@pytest.fixture(autouse=True)
def nothing_held():
    for pk in session_owner.held():
        session_owner.release(pk)
    yield
    for pk in session_owner.held():
        session_owner.release(pk)


def test_rows_of_gone_owners_are_closed_and_their_devices_shown_offline():
    me = session_owner.this_process()
    dead = row("dead", server_host=me.host, server_pid=dead_pid(), server_started_at=me.started_at)
    reused = row("reused", server_host=me.host, server_pid=me.pid, server_started_at=me.started_at - 3600)
    stale = row("stale elsewhere", beat_age=4 * PERIOD, server_host="other-host", server_pid=1, server_started_at=1.0)
    fresh = row("fresh elsewhere", beat_age=PERIOD, server_host="other-host", server_pid=1, server_started_at=1.0)
    mine = row("mine, held", beat_age=2 * PERIOD, **me.fields())
    lost = row("mine, released", beat_age=2 * PERIOD, **me.fields())
    just_opened = row("mine, just opened", **me.fields())
    session_owner.hold(mine.pk)

    assert session_owner.close_orphaned_sessions(PERIOD) == 4
    reasons = {r.pk: (r.ended_at is not None, r.close_reason) for r in DeviceSession.objects.all()}
    assert reasons == {
        dead.pk: (True, f"server process {dead.server_pid} gone"),
        reused.pk: (True, f"server process {me.pid} gone"),  # the pid lives on in another process: not the owner
        stale.pk: (True, session_owner.HEARTBEAT_LOST),
        fresh.pk: (False, ""),
        mine.pk: (False, ""),
        lost.pk: (True, "socket released without its close written"),
        just_opened.pk: (False, ""),
    }
    online = set(Device.objects.filter(online=True).values_list("pk", flat=True))
    assert online == {fresh.device_id, mine.device_id, just_opened.device_id}


def test_the_heartbeat_renews_held_rows_and_reopens_one_a_sweep_elsewhere_closed():
    me = session_owner.this_process()
    held = row("held", beat_age=10 * PERIOD, **me.fields())
    DeviceSession.objects.filter(pk=held.pk).update(ended_at=timezone.now(), close_reason=session_owner.HEARTBEAT_LOST)
    Device.objects.filter(pk=held.device_id).update(online=False)
    session_owner.hold(held.pk)

    assert session_owner.heartbeat() == 1
    held.refresh_from_db()
    assert held.ended_at is None and timezone.now() - held.heartbeat_at < timedelta(seconds=PERIOD)
    assert Device.objects.get(pk=held.device_id).online

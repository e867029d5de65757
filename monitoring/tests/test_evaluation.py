from datetime import datetime, timedelta, timezone

from monitoring import evaluation as ev

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_breached_comparisons():
    assert ev.breached(81, ">", 80) is True
    assert ev.breached(80, ">", 80) is False
    assert ev.breached(80, ">=", 80) is True
    assert ev.breached(3, "<", 5) is True
    assert ev.breached(None, ">", 1) is None


def test_no_hold_opens_at_once_and_resolves():
    assert ev.decide("ok", True, T0, None, 0, None) == ev.OPEN
    assert ev.decide("firing", True, T0, None, 0, None) == ev.NONE
    assert ev.decide("firing", False, T0, None, 0, None) == ev.RESOLVE
    assert ev.decide("ok", False, T0, None, 0, None) == ev.NONE


def test_held_for_duration():
    assert ev.decide("ok", True, T0, None, 60, None) == ev.PEND
    assert ev.decide("pending", True, T0 + timedelta(seconds=30), T0, 60, None) == ev.NONE
    assert ev.decide("pending", True, T0 + timedelta(seconds=60), T0, 60, None) == ev.OPEN
    assert ev.decide("pending", False, T0 + timedelta(seconds=30), T0, 60, None) == ev.CLEAR


def test_cooldown_delays_reopening():
    until = T0 + timedelta(seconds=300)
    assert ev.decide("ok", True, T0, None, 0, until) == ev.PEND
    assert ev.decide("pending", True, T0 + timedelta(seconds=100), T0, 0, until) == ev.NONE
    assert ev.decide("pending", True, until, T0, 0, until) == ev.OPEN


def test_missing_value_changes_nothing():
    assert ev.decide("firing", None, T0, None, 0, None) == ev.NONE

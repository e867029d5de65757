"""Pure rule evaluation: from a rule's state, a value and the clock, what transition is due.

No database here, so the held-for and cooldown rules are tested exactly; alerts.py applies the
answer with compare-and-set updates.
"""
from __future__ import annotations

import operator
from datetime import datetime

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}

NONE, PEND, OPEN, RESOLVE, CLEAR = "none", "pend", "open", "resolve", "clear"


def breached(value: float | None, comparison: str, threshold: float) -> bool | None:
    """True/False, or None when the metric has no value (then nothing changes)."""
    if value is None:
        return None
    return OPS[comparison](value, threshold)


def decide(
    state: str,
    is_breached: bool | None,
    now: datetime,
    pending_since: datetime | None,
    for_seconds: float,
    cooldown_until: datetime | None,
) -> str:
    """The transition for one evaluation.

    ok -> pending when the condition starts holding (or straight to open when no hold is needed);
    pending -> open once it has held ``for_seconds`` and no cooldown runs; pending -> ok when it
    stops holding; firing -> resolve when it stops holding.
    """
    if is_breached is None:
        return NONE
    cooling = cooldown_until is not None and now < cooldown_until
    if state == "firing":
        return RESOLVE if not is_breached else NONE
    if not is_breached:
        return CLEAR if state == "pending" else NONE
    held = 0.0 if state != "pending" or pending_since is None else (now - pending_since).total_seconds()
    if held >= for_seconds and not cooling:
        return OPEN
    return PEND if state == "ok" else NONE

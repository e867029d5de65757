"""Apply rule decisions to the database, once each, and tell people.

Several processes (Celery workers, or one scheduler per server process) may evaluate the same rule at
the same moment. Every transition is a compare-and-set ``UPDATE ... WHERE state = <the state read>``:
only the evaluator whose update changed a row creates the Alert and notifies.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from monitoring import aggregate, evaluation
from monitoring.models import Alert, AlertRule

log = logging.getLogger("monitoring.alerts")


def evaluate_rule(rule_id: int, combined: dict, now=None) -> str:
    """Evaluate one rule (read afresh, so an edit in the admin applies now); returns the transition made."""
    now = now or timezone.now()
    rule = AlertRule.objects.filter(pk=rule_id).first()
    if rule is None:
        return evaluation.NONE
    value = aggregate.lookup(combined, rule.metric)
    if not rule.enabled:
        is_breached = False if rule.state == AlertRule.STATE_FIRING else None
    else:
        is_breached = evaluation.breached(value, rule.comparison, rule.threshold)
    last = rule.alerts.filter(status=Alert.RESOLVED).order_by("-resolved_at").first()
    cooldown_until = last.resolved_at + timedelta(seconds=rule.cooldown_seconds) if last and last.resolved_at else None
    action = evaluation.decide(rule.state, is_breached, now, rule.pending_since, rule.for_seconds, cooldown_until)
    AlertRule.objects.filter(pk=rule.pk).update(last_value=value, last_evaluated_at=now)
    cas = AlertRule.objects.filter(pk=rule.pk, state=rule.state)
    if action == evaluation.PEND:
        return action if cas.update(state=AlertRule.STATE_PENDING, pending_since=now) else evaluation.NONE
    if action == evaluation.CLEAR:
        return action if cas.update(state=AlertRule.STATE_OK, pending_since=None) else evaluation.NONE
    if action == evaluation.OPEN:
        with transaction.atomic():
            if not cas.update(state=AlertRule.STATE_FIRING, pending_since=None):
                return evaluation.NONE
            alert = Alert.objects.create(
                rule=rule, severity=rule.severity, opened_at=now, value=value,
                message=f"{rule.name}: {rule.metric} = {value:g} {rule.comparison} {rule.threshold:g}",
            )
        notify(alert, "opened")
        return action
    if action == evaluation.RESOLVE:
        with transaction.atomic():
            if not cas.update(state=AlertRule.STATE_OK, pending_since=None):
                return evaluation.NONE
            alert = rule.alerts.filter(status=Alert.OPEN).order_by("-opened_at").first()
            if alert is None or not Alert.objects.filter(pk=alert.pk, status=Alert.OPEN).update(
                status=Alert.RESOLVED, resolved_at=now, resolved_value=value
            ):
                return action
            alert.refresh_from_db()
        notify(alert, "resolved")
        return action
    return evaluation.NONE


def evaluate_all(combined: dict | None = None, now=None) -> dict[int, str]:
    """Every rule against one set of figures (collected now unless given)."""
    combined = combined or aggregate.current()
    ids = AlertRule.objects.filter(Q(enabled=True) | Q(state=AlertRule.STATE_FIRING)).values_list("pk", flat=True)
    return {pk: evaluate_rule(pk, combined, now) for pk in ids}


def notify(alert: Alert, event: str) -> None:
    """Log it (the admin shows Alert rows and the dashboard the open ones) and post the webhook."""
    level = logging.ERROR if alert.severity == "critical" else logging.WARNING
    log.log(level, "alert %s [%s]: %s", event, alert.severity, alert.message)
    notified = dict(alert.notified or {})
    notified[event] = {"log": True}
    url = settings.XIAOZHI_MONITORING_WEBHOOK_URL
    if url:
        notified[event]["webhook"] = post_webhook(url, alert, event)
    Alert.objects.filter(pk=alert.pk).update(notified=notified)


def post_webhook(url: str, alert: Alert, event: str) -> str:
    import httpx

    payload = {
        "event": event, "rule": alert.rule.name, "metric": alert.rule.metric, "severity": alert.severity,
        "threshold": alert.rule.threshold, "value": alert.value if event == "opened" else alert.resolved_value,
        "message": alert.message, "opened_at": alert.opened_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }
    try:
        response = httpx.post(url, json=payload, timeout=settings.XIAOZHI_MONITORING_WEBHOOK_TIMEOUT_SECONDS)
        return f"{response.status_code}"
    except httpx.HTTPError as exc:
        log.warning("alert webhook failed: %s", exc)
        return f"error: {exc}"

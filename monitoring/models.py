"""Stored monitoring: periodic snapshots, alert rules edited in the admin, and the alerts they raise."""
from django.db import models


class MetricSnapshot(models.Model):
    """The combined metrics at one moment; a few figures are columns so charts and ranges stay cheap."""

    created_at = models.DateTimeField(db_index=True)
    source = models.CharField(max_length=100, blank=True, help_text="Process or 'combined'.")
    processes = models.PositiveIntegerField(default=1)
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_percent = models.FloatField(null=True, blank=True)
    connected_devices = models.FloatField(null=True, blank=True)
    active_turns = models.FloatField(null=True, blank=True)
    ttfa_p95_ms = models.FloatField(null=True, blank=True)
    error_rate = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["source", "created_at"], name="monitoring_snap_src_time")]

    def __str__(self) -> str:
        return f"{self.source} @ {self.created_at:%Y-%m-%d %H:%M:%S}"


class AlertRule(models.Model):
    """A threshold on one metric; read afresh at every evaluation, so edits apply without restart."""

    COMPARISONS = [(">", ">"), (">=", ">="), ("<", "<"), ("<=", "<="), ("==", "==")]
    SEVERITIES = [("info", "info"), ("warning", "warning"), ("critical", "critical")]
    STATE_OK, STATE_PENDING, STATE_FIRING = "ok", "pending", "firing"
    STATES = [(STATE_OK, "ok"), (STATE_PENDING, "pending"), (STATE_FIRING, "firing")]

    name = models.CharField(max_length=100, unique=True)
    metric = models.CharField(max_length=100, help_text="e.g. cpu_percent, memory_percent, error_rate, "
                              "ttfa_p95_ms, connected_devices, active_turns, or a dotted path into the snapshot.")
    comparison = models.CharField(max_length=2, choices=COMPARISONS, default=">")
    threshold = models.FloatField()
    for_seconds = models.PositiveIntegerField(default=0, help_text="How long the condition must hold.")
    cooldown_seconds = models.PositiveIntegerField(default=300, help_text="Quiet time after an alert resolves.")
    severity = models.CharField(max_length=10, choices=SEVERITIES, default="warning")
    enabled = models.BooleanField(default=True)
    # Evaluation state, changed only by compare-and-set updates (several evaluators may race).
    state = models.CharField(max_length=10, choices=STATES, default=STATE_OK, editable=False)
    pending_since = models.DateTimeField(null=True, blank=True, editable=False)
    last_value = models.FloatField(null=True, blank=True, editable=False)
    last_evaluated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}: {self.metric} {self.comparison} {self.threshold:g}"


class Alert(models.Model):
    OPEN, RESOLVED = "open", "resolved"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    status = models.CharField(max_length=10, choices=[(OPEN, "open"), (RESOLVED, "resolved")], default=OPEN)
    severity = models.CharField(max_length=10, default="warning")
    opened_at = models.DateTimeField(db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    resolved_value = models.FloatField(null=True, blank=True)
    message = models.TextField(blank=True)
    notified = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["rule", "status"], name="monitoring_alert_rule_status")]

    def __str__(self) -> str:
        return f"{self.rule.name} {self.status} @ {self.opened_at:%Y-%m-%d %H:%M:%S}"

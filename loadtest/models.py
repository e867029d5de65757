"""Stored load-test runs, so a server's capacity can be compared across changes in the admin."""
from django.db import models


class LoadTestRun(models.Model):
    """One ``manage.py loadtest`` run: its settings, its figures and whether it met its targets."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    target = models.CharField(max_length=500)
    settings = models.JSONField(default=dict, blank=True)
    devices = models.PositiveIntegerField(default=0)
    turns_completed = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=dict, blank=True)
    error_rate = models.FloatField(default=0.0)
    figures = models.JSONField(default=dict, blank=True)
    ttfa_p50 = models.FloatField(null=True, blank=True)
    ttfa_p95 = models.FloatField(null=True, blank=True)
    ttfa_p99 = models.FloatField(null=True, blank=True)
    underruns_per_minute = models.FloatField(null=True, blank=True)
    generator_behind = models.BooleanField(default=False)
    passed = models.BooleanField(default=True)
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        # The table keeps the name it had when the model lived in the voice app, so existing
        # databases keep their runs (the move was a state-only migration on both sides).
        db_table = "voice_loadtestrun"
        ordering = ["-created_at"]
        verbose_name = "load-test run"

    def __str__(self):
        return f"load test {self.created_at:%Y-%m-%d %H:%M} {self.devices} devices -> {self.target}"

    @classmethod
    def from_report(cls, target: str, report: dict) -> "LoadTestRun":
        ttfa = report["figures"]["ttfa_ms"]
        return cls.objects.create(
            target=target, settings=report["settings"], devices=report["devices"],
            turns_completed=report["turns_completed"], errors=report["errors"], error_rate=report["error_rate"],
            figures=report["figures"], ttfa_p50=ttfa["p50"], ttfa_p95=ttfa["p95"], ttfa_p99=ttfa["p99"],
            underruns_per_minute=report["audio"]["underruns_per_minute"],
            generator_behind=report["generator"]["behind_schedule"], passed=report["passed"], report=report,
        )

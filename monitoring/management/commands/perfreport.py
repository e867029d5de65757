"""Sample the combined figures for a while and write a monitoring report (JSON)."""
import json
import time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from monitoring import aggregate
from monitoring.models import Alert, MetricSnapshot


def summarise(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0] if samples else []:
        values = [s[key] for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            out[key] = {"min": min(values), "avg": round(sum(values) / len(values), 3), "max": max(values),
                        "last": values[-1]}
    return out


class Command(BaseCommand):
    help = "Sample the monitoring figures every --interval seconds for --duration seconds; write a JSON report."

    def add_arguments(self, parser):
        parser.add_argument("--duration", type=float, default=60.0)
        parser.add_argument("--interval", type=float, default=5.0)
        parser.add_argument("--output", default="report.json")

    def handle(self, *args, duration, interval, output, **options):
        if duration <= 0 or interval <= 0:
            raise CommandError("--duration and --interval must be positive")
        started = timezone.now()
        deadline = time.monotonic() + duration
        samples, last = [], None
        while True:
            tick = time.monotonic()
            last = aggregate.current()
            samples.append({"at": timezone.now().isoformat(), **last["flat"]})
            if tick + interval > deadline:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
        ended = timezone.now()
        report = {
            "started_at": started.isoformat(), "ended_at": ended.isoformat(),
            "duration_seconds": duration, "interval_seconds": interval, "samples_taken": len(samples),
            "summary": summarise([{k: v for k, v in s.items() if k != "at"} for s in samples]),
            "samples": samples,
            "final": {k: last[k] for k in ("latency_ms", "services", "counters", "errors", "gauges", "processes",
                                           "system", "cache", "database")},
            "snapshots_in_period": MetricSnapshot.objects.filter(created_at__gte=started, created_at__lte=ended).count(),
            "alerts_opened_in_period": [
                {"rule": a.rule.name, "severity": a.severity, "message": a.message, "status": a.status,
                 "opened_at": a.opened_at.isoformat()}
                for a in Alert.objects.filter(opened_at__gte=started, opened_at__lte=ended).select_related("rule")
            ],
            "open_alerts": Alert.objects.filter(status=Alert.OPEN).count(),
        }
        with open(output, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        self.stdout.write(f"wrote {output}: {len(samples)} samples over {duration:g}s")

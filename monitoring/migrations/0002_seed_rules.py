"""The default alert rules from the issue; edited afterwards in the admin."""
from django.db import migrations

RULES = [
    ("High CPU", "cpu_percent", 80, 60, "warning"),
    ("High memory", "memory_percent", 85, 60, "warning"),
    ("High error rate", "error_rate", 5, 0, "critical"),
    ("Slow response", "ttfa_p95_ms", 5000, 0, "warning"),
    ("Many connected devices", "connected_devices", 400, 0, "warning"),
]


def seed(apps, schema_editor):
    AlertRule = apps.get_model("monitoring", "AlertRule")
    for name, metric, threshold, for_seconds, severity in RULES:
        AlertRule.objects.get_or_create(
            name=name,
            defaults={"metric": metric, "comparison": ">", "threshold": threshold,
                      "for_seconds": for_seconds, "cooldown_seconds": 300, "severity": severity},
        )


def unseed(apps, schema_editor):
    apps.get_model("monitoring", "AlertRule").objects.filter(name__in=[r[0] for r in RULES]).delete()


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]

"""LoadTestRun, moved here from the voice app: the table ``voice_loadtestrun`` (made by
``voice.0001_initial``) is adopted as it is, so existing runs are kept; only Django's state moves.
The content type is renamed too, so permissions granted on the model stay with it."""
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label="loadtest", model="loadtestrun").exists():
        ContentType.objects.using(db).filter(app_label="voice", model="loadtestrun").update(app_label="loadtest")


def restore_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label="voice", model="loadtestrun").exists():
        ContentType.objects.using(db).filter(app_label="loadtest", model="loadtestrun").update(app_label="voice")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("voice", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="LoadTestRun",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("target", models.CharField(max_length=500)),
                        ("settings", models.JSONField(blank=True, default=dict)),
                        ("devices", models.PositiveIntegerField(default=0)),
                        ("turns_completed", models.PositiveIntegerField(default=0)),
                        ("errors", models.JSONField(blank=True, default=dict)),
                        ("error_rate", models.FloatField(default=0.0)),
                        ("figures", models.JSONField(blank=True, default=dict)),
                        ("ttfa_p50", models.FloatField(blank=True, null=True)),
                        ("ttfa_p95", models.FloatField(blank=True, null=True)),
                        ("ttfa_p99", models.FloatField(blank=True, null=True)),
                        ("underruns_per_minute", models.FloatField(blank=True, null=True)),
                        ("generator_behind", models.BooleanField(default=False)),
                        ("passed", models.BooleanField(default=True)),
                        ("report", models.JSONField(blank=True, default=dict)),
                    ],
                    options={
                        "verbose_name": "load-test run",
                        "db_table": "voice_loadtestrun",
                        "ordering": ["-created_at"],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, restore_content_type),
    ]

"""LoadTestRun moved to the loadtest app: removed from this app's state only, the table stays
(``loadtest.0001_initial`` takes it over under its old name)."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("voice", "0001_initial"),
        ("loadtest", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="LoadTestRun")],
            database_operations=[],
        ),
    ]

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0008_session_owner'),
    ]

    operations = [
        migrations.AddField(
            model_name='turn',
            name='tool_calls',
            field=models.JSONField(blank=True, default=list, help_text='The tools the reply called, in order: name, arguments, result, is_error, seconds.'),
        ),
    ]

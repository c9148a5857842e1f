from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    """A submit's client id (a re-sent submit finds its turn) and a turn's owning worker."""

    dependencies = [
        ("chat", "0005_message_served_by"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="client_id",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="message",
            name="worker",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(condition=~models.Q(client_id=""), fields=("conversation", "client_id"),
                                               name="message_unique_client_id"),
        ),
    ]

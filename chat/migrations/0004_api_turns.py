from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_conversation_knowledge_bases")]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="source",
            field=models.CharField(choices=[("web", "Chat page"), ("api", "OpenAI-compatible API")], default="web",
                                   max_length=10),
        ),
        migrations.AddField(
            model_name="message",
            name="request",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    """`backend` meant five things in the code base; on a message it is who served the answer."""

    dependencies = [
        ("chat", "0004_api_turns"),
    ]

    operations = [
        migrations.RenameField(model_name="message", old_name="backend", new_name="served_by"),
    ]

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('knowledge', '0005_chunk_statistics'),
    ]

    operations = [
        migrations.AddField(
            model_name='knowledgebase',
            name='sensitive',
            field=models.BooleanField(default=False),
        ),
    ]

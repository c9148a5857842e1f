from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0003_quotas'),
    ]

    operations = [
        migrations.AddField(
            model_name='tenant',
            name='sensitive',
            field=models.BooleanField(default=False),
        ),
    ]

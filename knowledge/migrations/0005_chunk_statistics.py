"""Tells the planner that a knowledge base belongs to one tenant.

Without it the planner multiplies the selectivities of `tenant_id = X` and `knowledge_base_id =
ANY(...)` as if independent, underestimates the rows (801 estimated, 10,000 real in
bench/retrieval_speed.py) and plans an exact scan instead of the HNSW index for tenants in
crowded partitions: 27% of queries there, 9-12 ms at 10k chunks and linear beyond. After
partition pruning the planner reads each partition's own statistics, so each partition gets them.
"""

from __future__ import annotations

from django.db import migrations

from knowledge.vector_index import PARTITIONS

NAMES = [f"knowledge_chunk_p{i}" for i in range(PARTITIONS)]

FORWARD = "".join(
    f"CREATE STATISTICS {name}_tenant_kb (dependencies) ON tenant_id, knowledge_base_id FROM {name};\n"
    f"ANALYZE {name};\n"
    for name in NAMES
)
BACKWARD = "".join(f"DROP STATISTICS IF EXISTS {name}_tenant_kb;\n" for name in NAMES)


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0004_chunk_partitioned")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

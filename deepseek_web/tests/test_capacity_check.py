"""The start-up check of worker threads against PostgreSQL's connection limit (issue 12, finding 16)."""

from __future__ import annotations

import pytest

from deepseek_web import cli


def test_it_refuses_more_threads_than_connections_without_a_pool() -> None:
    # Finding 16: 200 concurrent turns, one connection each, on a server of 100 slots.
    with pytest.raises(cli.DatabaseCapacityError, match="lower GPU_CONCURRENCY or DB_POOL_MAX_SIZE"):
        cli.database_capacity_check(processes={"web": 6, "gpu": 200}, pool_max_size=0,
                                    max_connections=100, reserved=3)


def test_it_accepts_hundreds_of_threads_that_share_a_pool() -> None:
    summary = cli.database_capacity_check(processes={"web": 6, "gpu": 500, "beat": 1}, pool_max_size=10,
                                          max_connections=100, reserved=3)
    assert "up to 19 needed" in summary and "of 97 available" in summary


def test_it_refuses_pools_that_together_exceed_the_limit() -> None:
    with pytest.raises(cli.DatabaseCapacityError, match="DB_POOL_MAX_SIZE=40 per process"):
        cli.database_capacity_check(processes={"web": 40, "gpu": 500, "ingest": 40}, pool_max_size=40,
                                    max_connections=100, reserved=3)


@pytest.mark.django_db
def test_it_reads_the_real_servers_limits(settings) -> None:
    max_connections, reserved = cli.database_limits()
    assert max_connections > reserved >= 0
    settings.DB_POOL_MAX_SIZE = 0
    with pytest.raises(cli.DatabaseCapacityError, match=f"max_connections {max_connections}"):
        cli.check_database_capacity(gpu_concurrency=max_connections)
    settings.DB_POOL_MAX_SIZE = 5
    cli.check_database_capacity(gpu_concurrency=max_connections)


@pytest.mark.django_db
def test_it_warns_a_worker_with_more_threads_than_connections(settings) -> None:
    max_connections, _ = cli.database_limits()
    settings.DB_POOL_MAX_SIZE = 0
    assert "refusing to start" in cli.worker_capacity_warning(max_connections)
    settings.DB_POOL_MAX_SIZE = 5
    assert cli.worker_capacity_warning(max_connections) == ""

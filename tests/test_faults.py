"""Redis and PostgreSQL restarts with turns in flight: every turn takes effect exactly once or fails
visibly, and new turns flow afterwards (issue 12, finding 14). Outcomes only: the drill's times are
figures for bench/, not assertions."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("kind", ["redis", "pg"])
def test_it_ends_every_turn_once_through_a_restart(fault_drill: dict[str, Any], kind: str) -> None:
    faults = [f for f in fault_drill["faults"] if f["kind"] == kind]
    assert faults, fault_drill["output"]
    for fault in faults:
        assert fault["stuck"] == 0, fault_drill["output"]  # never left pending or streaming
        assert fault["duplicates"] == 0 and fault["lost"] == 0, fault_drill["output"]
        assert set(fault["outcomes"]) <= {"done", "failed"}, fault_drill["output"]
        assert fault["next_turn_s"] is not None, fault_drill["output"]  # new turns flow again

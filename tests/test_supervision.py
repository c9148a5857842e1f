"""`./dsw run` supervises its processes: kill -9 of the gpu worker brings it back, the data services
and the run command stay up, and the turns in flight end once (issue 12, finding 13)."""

from __future__ import annotations

from typing import Any


def test_it_brings_a_killed_gpu_worker_back_and_keeps_the_data_services(fault_drill: dict[str, Any]) -> None:
    kills = [f for f in fault_drill["faults"] if f["kind"] == "kill"]
    assert kills, fault_drill["output"]
    assert fault_drill["gpu_restarts"] >= 1
    assert fault_drill["run_alive"] and fault_drill["services_kept"], fault_drill["output"]
    for fault in kills:
        # Every turn in flight ended done or failed, none twice, nothing lost; the next one was answered.
        assert fault["stuck"] == 0 and fault["duplicates"] == 0 and fault["lost"] == 0, fault_drill["output"]
        assert set(fault["outcomes"]) <= {"done", "failed"}
        assert fault["next_turn_s"] is not None, fault_drill["output"]


def test_it_keeps_the_demo_passwords_when_run_again(db: None) -> None:
    from django.contrib.auth import get_user_model

    from console.services import demo_tenant_seed

    demo_tenant_seed()
    user = get_user_model().objects.get(username="employee")
    user.set_password("a-password-the-user-chose")
    user.save()
    logins = demo_tenant_seed()  # `./dsw run` again
    user.refresh_from_db()
    assert user.check_password("a-password-the-user-chose")
    assert "a-password-the-user-chose" not in {login.password for login in logins}

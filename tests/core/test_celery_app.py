"""The Celery app takes its worker limits from settings: recycling after N tasks or M MB is
what keeps a leaking FLUX worker from growing without bound."""

from __future__ import annotations

import pytest

from core import celery_app
from core.settings import Settings


def test_worker_recycling_and_delivery_come_from_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("CLEARANCE_WORKER__MAX_TASKS_PER_CHILD", "7")
    monkeypatch.setenv("CLEARANCE_WORKER__MAX_MEMORY_PER_CHILD_MB", "512")
    monkeypatch.setenv("CLEARANCE_WORKER__STAGE_SOFT_TIME_LIMIT_S", "30")
    monkeypatch.setenv("CLEARANCE_WORKER__STAGE_TIME_LIMIT_S", "40")
    monkeypatch.setenv("CLEARANCE_DATA_DIR", str(tmp_path))
    conf = celery_app.configure(Settings()).conf
    assert conf.worker_max_tasks_per_child == 7
    assert conf.worker_max_memory_per_child == 512 * 1024  # Celery counts kilobytes
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (30, 40)
    # A task is acknowledged only once done, and handed back if its worker dies.
    assert conf.task_acks_late
    assert conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1

"""The benchmarks run end to end in their smallest configuration (--quick), so they do not
rot between the runs that record their figures. Nothing here judges a figure: that is what
the benchmarks print, for a person to read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The Redis database this test owns for the broker; bench/load.py empties it before and after.
REDIS_DB = 14


def bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}\n{done.stdout}\n{done.stderr[-5000:]}"
    )
    return done.stdout


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.e2e
def test_load_runs_end_to_end(postgres_server: str, redis_server: str) -> None:
    out = bench("load.py", "--postgres", postgres_server, "--redis", f"{redis_server}/{REDIS_DB}")
    # The first rate, 5 requests in 1 s: all of them answered 201.
    assert re.search(r"^ +5 +5 +5 +[\d.]+ +[\d.]+ +[\d.]+$", out, re.MULTILINE)
    assert "highest rate with p99 < 50 ms: " in out
    # Every job of the pipeline was released: the tiny model's noise matches nothing.
    assert re.search(r"1 worker : +[\d.]+ jobs/min \(2 jobs in [\d.]+ s: 2 released\)", out)
    assert re.search(r"outside stages: mean [\d.]+ ms, p95 [\d.]+ ms", out)


@pytest.mark.e2e
def test_soak_runs_end_to_end() -> None:
    out = bench("soak.py", "--embedded")
    sizes = r"[\d.]+ MiB \(\d+ \+ \d+: main process \+ pool child\)"
    assert re.search(rf"start \(after 2 warm-up jobs\): {sizes}", out)
    assert re.search(rf"start {sizes}, end {sizes}, growth [-+][\d.]+%", out)
    assert re.search(r"^10 jobs in \d+ s \([\d.]+ jobs/min\): 10 released$", out, re.MULTILINE)

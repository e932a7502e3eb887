"""What bench/load.py and bench/soak.py share: the service as real processes (`clearance
serve --no-worker`, `clearance worker`) on one database and broker, a throwaway PostgreSQL
database, and the timings of jobs as the database recorded them."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from generation.tiny import ensure_tiny_flux
from pipeline.models import SETTLED_STATES, Job

CLEARANCE = str(Path(sys.executable).parent / "clearance")
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_SERVER = "redis://127.0.0.1:6379"
# Jobs as small as generation allows, so the figures are about orchestration, not pixels.
JOB = {"variant": "schnell", "width": 256, "height": 256, "n_images": 1}


def machine(*, load_only: bool = False) -> str:
    """This machine in a line: CPU, cores, memory, and the load average (other processes)."""
    load = ", ".join(f"{n:.2f}" for n in os.getloadavg())
    if load_only:
        return load
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {memory_gib:.0f} GiB, "
        f"Python {platform.python_version()}; load average {load}"
    )


def add_server_options(parser: argparse.ArgumentParser, redis_db: int) -> None:
    parser.add_argument(
        "--postgres",
        default=POSTGRES_SERVER,
        help="a PostgreSQL server to create a throwaway database on (default %(default)s)",
    )
    parser.add_argument(
        "--redis",
        default=f"{REDIS_SERVER}/{redis_db}",
        help="a Redis database for the broker, emptied before and after (default %(default)s)",
    )


def service_env(root: Path) -> dict[str, str]:
    """Settings of a benchmark's processes: data under `root`, the tiny model (built once)."""
    return {
        "CLEARANCE_DATA_DIR": str(root / "var"),
        "CLEARANCE_GENERATION__TINY_MODEL_DIR": str(ensure_tiny_flux(root / "tiny-flux")),
        # Every job settles by itself: no random sample goes to a person.
        "CLEARANCE_ROUTING__SAMPLE_RATE": "0",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A new, empty database on `server`, dropped afterwards."""
    name = f"clearance_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def flush_redis(url: str) -> None:
    redis.Redis.from_url(url).flushdb()


class Stack:
    """The API and workers as separate processes, each in its own process group, logging
    under `root`; every process is stopped on exit."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        # Logs in UTC, the zone of the database's times (see task_spans).
        self.env = os.environ | {"HF_HUB_OFFLINE": "1", "TZ": "UTC"} | env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_url = ""

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        for name in list(self.processes):
            self.stop(name)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [CLEARANCE, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise RuntimeError(f"clearance {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def requester_key(self, tenant: str = "bench") -> str:
        """Migrate the database, create a tenant, and return a requester key for it."""
        self.cli("db", "upgrade")
        self.cli("tenants", "create", tenant)
        return self.cli("keys", "create", "--tenant", tenant, "--role", "requester")

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("ab") as log:  # the process keeps its own copy
            process = subprocess.Popen(
                [CLEARANCE, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start_api(self) -> str:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.start("api", "serve", "--no-worker", "--port", str(port))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.processes["api"].poll() is not None:
                raise RuntimeError(f"the API exited\n{self.log('api')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return self.api_url
            time.sleep(0.2)
        raise RuntimeError(f"the API did not come up\n{self.log('api')}")

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(name, "worker", "--concurrency", "1", *extra)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return "\n".join(tail)


def submit(client: httpx.Client, prompt: str, seed: int) -> str:
    response = client.post("/v1/jobs", json={**JOB, "prompt": prompt, "seed": seed})
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text}")
    job_id: str = response.json()["id"]
    return job_id


@dataclass(frozen=True)
class JobTiming:
    """A settled job's times as the database recorded them. `gaps` is the time outside any
    stage, per transition: "queued->prompt_check" (commit, broker, worker pick-up), "a->b"
    between two stages, "release->settled" (the final commit after the last stage)."""

    state: str
    created_at: datetime
    # The last state change (settled): final, or waiting for a person.
    settled_at: datetime
    gaps: dict[str, float]

    @property
    def end_to_end_s(self) -> float:
        return (self.settled_at - self.created_at).total_seconds()

    @property
    def overhead_s(self) -> float:
        return sum(self.gaps.values())


def job_timing(job: Job) -> JobTiming:
    gaps, before, since = {}, "queued", job.created_at
    for stage in job.stages:  # in the order they started
        gaps[f"{before}->{stage.stage}"] = (stage.started_at - since).total_seconds()
        before, since = stage.stage, stage.finished_at or stage.started_at
    # The last stage may change the state (updated_at) before it stamps its own finish, in
    # the same transaction: settled is the later of the two.
    settled_at = max(job.updated_at, since)
    gaps[f"{before}->settled"] = (settled_at - since).total_seconds()
    return JobTiming(job.state, job.created_at, settled_at, gaps)


# A worker's log line about a stage task (the `clearance` log format, times in UTC):
# "2026-11-26 08:31:42,736 INFO celery.worker.strategy: Task pipeline.route[<id>] received"
_TASK_LINE = re.compile(
    r"^(\S+ \S+) INFO celery\.\S+: Task pipeline\.(\w+)\[([\w-]+)\] "
    r"(received|succeeded|ignored|retry|raised)"
)


def _task_lines(log: Path) -> Iterator[tuple[datetime, str, str, str]]:
    """(time, stage, task id, event) of each stage task line in a worker's log."""
    for line in log.read_text(errors="replace").splitlines():
        found = _TASK_LINE.match(line)
        if found is not None:
            at = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
            yield at, found[2], found[3], found[4]


def task_spans(log: Path) -> list[tuple[datetime, datetime]]:
    """When the worker's main process received each stage task and saw it end, from its log
    (millisecond resolution): the task's run in the pool child, the claim and the result
    transactions included, and the hand-over to and from the child."""
    received: dict[str, datetime] = {}
    spans = []
    for at, _, task_id, event in _task_lines(log):
        if event == "received":
            received[task_id] = at
        elif task_id in received:
            spans.append((received.pop(task_id), at))
    return spans


# A stage a task ran inline, after its own stage (pipeline/tasks.py):
# "2026-11-26 08:31:42,741 INFO pipeline.tasks: job <id>: route runs inline after image_check"
_INLINE_LINE = re.compile(r"^\S+ \S+ INFO pipeline\.tasks: job \w+: (\w+) runs inline after \w+")


def stages_run(log: Path) -> set[str]:
    """The stages a worker has run at least once, as the stage of a task of its own or inline
    in the task of an earlier stage: it has loaded what they need."""
    inline = {
        found[1]
        for line in log.read_text(errors="replace").splitlines()
        if (found := _INLINE_LINE.match(line)) is not None
    }
    return inline | {stage for _, stage, _, event in _task_lines(log) if event != "received"}


def settled(engine: sa.Engine, job_ids: Sequence[str]) -> dict[str, JobTiming]:
    """Those of the jobs that have settled (final, or waiting for a person), with timings."""
    with Session(engine) as session:
        jobs = session.scalars(
            sa.select(Job).where(Job.id.in_(job_ids), Job.state.in_(SETTLED_STATES))
        ).all()
        return {job.id: job_timing(job) for job in jobs}


def wait_settled(
    engine: sa.Engine, job_ids: Sequence[str], timeout_s: float, poll_s: float = 0.05
) -> list[JobTiming]:
    """Wait until every job has settled; their timings."""
    deadline = time.monotonic() + timeout_s
    while len(done := settled(engine, job_ids)) < len(job_ids):
        if time.monotonic() > deadline:
            waiting = len(job_ids) - len(done)
            raise RuntimeError(f"{waiting} of {len(job_ids)} jobs did not settle in {timeout_s} s")
        time.sleep(poll_s)
    return list(done.values())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]

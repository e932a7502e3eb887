"""The service as real processes (API, Celery workers) on servers a test may stop, start or
kill: a private redis-server and a private PostgreSQL cluster, each on a free port in a
folder of its own. The machine's own Redis and PostgreSQL are shared with the rest of the
suite and are never touched. Helpers read the database directly, to see what the workers
did and when a stage is under way."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import server_missing
from tests.e2e.conftest import Service, _group_alive, free_port

POSTGRES_BIN = Path(os.environ.get("CLEARANCE_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
TENANT = "acme"
# The job every reliability run submits: the tiny model at the smallest size it takes.
JOB: dict[str, Any] = {
    "prompt": "a lighthouse in a storm",
    "variant": "schnell",
    "use": "commercial",
    "width": 256,
    "height": 256,
    "n_images": 1,
}
# Short enough that a task whose worker was killed comes back within a test (Redis hands
# an unacknowledged task out again after 3 x the hard limit, see core/celery_app.py), long
# enough for a fresh worker's first stage, which loads the models, on a busy machine.
STAGE_SOFT_LIMIT_S = 40
STAGE_HARD_LIMIT_S = 45


def wait_for(what: str, ready: Callable[[], bool], timeout: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs()}")
        time.sleep(0.05)


class RedisServer:
    """A redis-server of this test's own. Append-only persistence is on, as a broker needs
    it: without it a restart forgets every queued task."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            server_missing("redis-server", FileNotFoundError("not on PATH"))
        self.binary = str(binary)
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for("redis-server to answer", self.answers, 30, self.logs)

    def answers(self) -> bool:
        import redis

        assert self.process is not None
        assert self.process.poll() is None, f"redis-server exited\n{self.logs()}"
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, as a service manager sends): the append-only file is
        flushed and the server exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        self.process = None

    def logs(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class PostgresCluster:
    """A PostgreSQL cluster of this test's own, made by initdb in a temporary folder. initdb
    refuses to run as root, so as root it runs as the `postgres` user."""

    def __init__(self) -> None:
        if not (POSTGRES_BIN / "initdb").exists():
            server_missing(f"PostgreSQL's initdb in {POSTGRES_BIN}", FileNotFoundError("missing"))
        # Not under pytest's tmp_path: that is private to root, and the server must reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="clearance-pg-"))
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        self.port = free_port()
        self.server_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_owner, str(POSTGRES_BIN / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{tool} failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}"

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "start")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as in a restart by a service manager."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        admin = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return sa.make_url(self.server_url).set(database=name).render_as_string(False)

    def logs(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


class Stack(Service):
    """The service on PostgreSQL and Redis, with workers that a test kills and restarts,
    and a view of the database the workers write."""

    def __init__(self, root: Path, database: str, broker: str, tiny_model_dir: Path) -> None:
        super().__init__(
            root,
            {
                "CLEARANCE_DATA_DIR": str(root / "var"),
                "CLEARANCE_DATABASE_URL": database,
                "CLEARANCE_BROKER_URL": broker,
                "CLEARANCE_GENERATION__TINY_MODEL_DIR": str(tiny_model_dir),
                # No random quality sample: every job that passes its checks is released.
                "CLEARANCE_ROUTING__SAMPLE_RATE": "0",
                "CLEARANCE_WORKER__STAGE_SOFT_TIME_LIMIT_S": str(STAGE_SOFT_LIMIT_S),
                "CLEARANCE_WORKER__STAGE_TIME_LIMIT_S": str(STAGE_HARD_LIMIT_S),
            },
        )
        self.database = database
        self.engine = sa.create_engine(database, pool_pre_ping=True)

    def prepare(self) -> None:
        """Migrate, create the tenant and its requester key, serve the API (no worker)."""
        self.cli("db", "upgrade")
        self.cli("tenants", "create", TENANT)
        self.api_key = self.cli(
            "keys", "create", "--tenant", TENANT, "--role", "requester"
        ).stdout.strip()
        self.start_api("--no-worker")

    def submit_jobs(self, count: int) -> list[str]:
        ids = []
        with self.http() as client:
            for seed in range(count):
                answer = client.post("/v1/jobs", json=JOB | {"seed": seed})
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])
        return ids

    def start_worker(self, name: str = "worker") -> None:
        self.start(name, "worker")

    def kill(self, name: str = "worker") -> None:
        """SIGKILL to the worker and its pool processes; returns when all are gone."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        wait_for(f"every process of {name} to die", lambda: not _group_alive(process.pid), 30,
                 self.logs)  # fmt: skip

    def query(self, statement: str, **params: object) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text(statement), params))

    def states(self, job_ids: list[str]) -> dict[str, int]:
        rows = self.query(
            "SELECT state, count(*) FROM jobs WHERE id = ANY(:ids) GROUP BY state", ids=job_ids
        )
        return dict(rows)

    def wait_all_settled(self, job_ids: list[str], timeout: float) -> dict[str, int]:
        """Wait until every job is final or waits for a person; the count of each state."""
        from pipeline.models import SETTLED_STATES

        def settled() -> bool:
            states = self.states(job_ids)
            return sum(n for s, n in states.items() if s in SETTLED_STATES) == len(job_ids)

        wait_for(f"{len(job_ids)} jobs to settle", settled, timeout, self.logs)
        return self.states(job_ids)

    def close(self) -> None:
        self.stop_all()
        self.engine.dispose()


@pytest.fixture
def make_stack(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Callable[[str, str], Stack]]:
    """`make_stack(database_url, broker_url)`: the service migrated, a tenant and its key,
    the API serving; every process it started is stopped afterwards. A test asks for it
    after the servers, so its processes stop before the servers do."""
    made: list[Stack] = []

    def make(database: str, broker: str) -> Stack:
        stack = Stack(tmp_path, database, broker, tiny_model_dir)
        made.append(stack)
        stack.prepare()
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.close()

"""The whole service as separate processes: `clearance serve` (uvicorn), `clearance worker`
(a real Celery worker), and the `clearance` CLI, on the embedded defaults (SQLite and the
SQLAlchemy broker) and on PostgreSQL with Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CLEARANCE = str(Path(sys.executable).parent / "clearance")
SETTLED = {"released", "in_review", "rejected", "blocked", "failed"}
# The Redis database the e2e tests own; it is emptied before each use.
REDIS_TEST_DB = 11


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | env | {"CLEARANCE_API_URL": self.api_url, "HF_HUB_OFFLINE": "1"}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_key: str | None = None

    def cli(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        env = self.env | ({"CLEARANCE_API_KEY": self.api_key} if self.api_key else {})
        done = subprocess.run(
            [CLEARANCE, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        if expect is not None:
            assert done.returncode == expect, (
                f"clearance {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr[-3000:]}\n{self.logs()}"
            )
        return done

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        # Its own process group, like a command started in a terminal, where Ctrl-C signals
        # the whole group (see `interrupt`).
        process = subprocess.Popen(
            [CLEARANCE, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def start_api(self, *extra: str) -> None:
        self.start("api", "serve", "--port", str(self.port), *extra)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.processes["api"].poll() is None, f"the API exited\n{self.logs()}"
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the API did not come up\n{self.logs()}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(
                    f"{name} did not stop on signal {sig}\n{self.logs()}"
                ) from None
        return process.returncode

    def interrupt(self, name: str, timeout: float = 60) -> None:
        """Ctrl-C in the terminal: SIGINT to the process and all its children; wait until
        every one of them is gone."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"{name} did not stop on Ctrl-C\n{self.logs()}") from None
        del self.processes[name]
        deadline = time.monotonic() + timeout
        while _group_alive(process.pid):
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise AssertionError(f"a child of {name} outlived it\n{self.logs()}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def logs(self, lines: int = 60) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def http(self) -> httpx.Client:
        assert self.api_key, "create a key first"
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    def submit(self, prompt: str, *options: str, expect: int = 0) -> dict[str, Any]:
        done = self.cli(
            "submit", prompt, "--wait", "--json", "--timeout", "240", *options, expect=expect
        )
        job: dict[str, Any] = json.loads(done.stdout)
        return job

    def wait_settled(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.http() as client:
            while time.monotonic() < deadline:
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in SETTLED:
                    return job
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not settle\n{self.logs()}")


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _embedded(root: Path) -> dict[str, str]:
    return {"CLEARANCE_DATA_DIR": str(root / "var")}


def _postgres_redis(root: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    import redis

    database: str = request.getfixturevalue("postgres_database")
    redis_url = f"{request.getfixturevalue('redis_server')}/{REDIS_TEST_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    return {
        "CLEARANCE_DATA_DIR": str(root / "var"),
        "CLEARANCE_DATABASE_URL": database,
        "CLEARANCE_BROKER_URL": redis_url,
    }


@pytest.fixture(params=["embedded", "postgres-redis"])
def service(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path
) -> Iterator[Service]:
    env = _embedded(tmp_path) if request.param == "embedded" else _postgres_redis(tmp_path, request)
    env["CLEARANCE_GENERATION__TINY_MODEL_DIR"] = str(tiny_model_dir)
    # No random quality sample: a test knows which jobs a person must see.
    env["CLEARANCE_ROUTING__SAMPLE_RATE"] = "0"
    service = Service(tmp_path, env)
    service.cli("db", "upgrade")
    try:
        yield service
    finally:
        service.stop_all()

"""Soak: many jobs through one worker; its resident memory at the start and at the end.

    python bench/soak.py [--jobs 1000] [--warm-up 20] [--recycle] [--embedded]
    python bench/soak.py --quick          # 10 jobs, to see that it runs

One `clearance worker --concurrency 1` (a Celery main process and one pool child) runs the
tiny model pipeline, on a fresh PostgreSQL database with a Redis broker (--embedded: SQLite
and the broker stored in SQLite, as `make run`). The API (`clearance serve --no-worker`)
takes the jobs; at most --window of them wait at a time, so the broker queue stays short.

Memory is the resident set (RSS) of the worker's whole process tree, summed, read after the
warm-up jobs (every model loaded) and then every tenth of the run; the growth from start to
end is the figure, target under 10%. By default the pool child is never recycled
(`CLEARANCE_WORKER__MAX_TASKS_PER_CHILD` set past the run), so a leak has nowhere to hide;
--recycle keeps the production setting (a fresh child every 200 tasks; a task may run a whole
job, see README "How a job flows").
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa
from harness import (
    Stack,
    add_server_options,
    flush_redis,
    machine,
    postgres_database,
    service_env,
    settled,
    submit,
)

GROWTH_TARGET_PERCENT = 10.0
# The first jobs load every model; after that a job takes seconds.
STALL_S = 600
MIB = 2**20


def tree_rss(pid: int) -> list[int]:
    """Resident bytes of a process and of each of its descendants, the process first."""
    root = psutil.Process(pid)
    sizes = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a pool child being replaced
            sizes.append(process.memory_info().rss)
    return sizes


def described(sizes: Sequence[int]) -> str:
    parts = " + ".join(f"{size / MIB:.0f}" for size in sizes)
    return f"{sum(sizes) / MIB:.1f} MiB ({parts}: main process + pool child)"


def run_jobs(
    client: httpx.Client,
    engine: sa.Engine,
    count: int,
    window: int,
    label: str,
    report: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Run `count` jobs, at most `window` waiting at a time; their final states. `report` is
    called with the number settled after each tenth of them."""
    states: Counter[str] = Counter()
    waiting: list[str] = []
    submitted = 0
    tenths = {round(count * n / 10) for n in range(1, 11)}
    last_settled = time.monotonic()
    while submitted < count or waiting:
        while submitted < count and len(waiting) < window:
            waiting.append(submit(client, f"{label} {submitted}: a lighthouse", submitted))
            submitted += 1
        done = settled(engine, waiting)
        for job_id, timing in done.items():
            waiting.remove(job_id)
            states[timing.state] += 1
            if report is not None and sum(states.values()) in tenths:
                report(sum(states.values()))
        if done:
            last_settled = time.monotonic()
        elif time.monotonic() - last_settled > STALL_S:
            raise RuntimeError(f"no job settled in {STALL_S} s; {len(waiting)} waiting")
        else:
            time.sleep(0.05)
    return states


def soak(args: argparse.Namespace, stack: Stack, key: str, database_url: str) -> None:
    engine = sa.create_engine(database_url)
    recycle = "production recycling (200 tasks per child)" if args.recycle else "never recycled"
    print(
        f"\nSoak: {args.jobs} jobs through one worker (pool child {recycle}), "
        f"{args.window} waiting at most"
    )
    worker = stack.start_worker("worker")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
            run_jobs(client, engine, args.warm_up, args.window, "warm-up")
            start = tree_rss(worker.pid)
            start_rss = sum(start)
            print(f"  start (after {args.warm_up} warm-up jobs): {described(start)}", flush=True)
            began = time.monotonic()

            def report(finished: int) -> None:
                rss = sum(tree_rss(worker.pid))
                print(
                    f"  {finished:5d} jobs: {rss / MIB:8.1f} MiB "
                    f"({(rss - start_rss) / start_rss * 100:+.1f}%), "
                    f"{finished / (time.monotonic() - began) * 60:.1f} jobs/min",
                    flush=True,
                )

            states = run_jobs(client, engine, args.jobs, args.window, "soak", report)
            seconds = time.monotonic() - began
            end = tree_rss(worker.pid)
    finally:
        engine.dispose()
    growth = (sum(end) - start_rss) / start_rss * 100
    print(
        f"worker resident memory: start {described(start)}, end {described(end)}, "
        f"growth {growth:+.1f}% (target < {GROWTH_TARGET_PERCENT:g}%)"
    )
    print(
        f"{args.jobs} jobs in {seconds:.0f} s ({args.jobs / seconds * 60:.1f} jobs/min): "
        + ", ".join(f"{n} {state}" for state, n in states.items())
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="jobs to run (default 1000)")
    parser.add_argument(
        "--warm-up", type=int, default=20, help="jobs before the start reading (default 20)"
    )
    parser.add_argument(
        "--window", type=int, default=4, help="jobs waiting at most at a time (default 4)"
    )
    parser.add_argument(
        "--recycle",
        action="store_true",
        help="keep the production recycling of the pool child (default: never recycle)",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="SQLite and the broker stored in SQLite instead of PostgreSQL and Redis",
    )
    add_server_options(parser, redis_db=13)
    parser.add_argument(
        "--quick", action="store_true", help="10 jobs after 2 warm-up jobs, to see that it runs"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.warm_up = 10, 2
    if args.jobs < 1 or args.warm_up < 0 or args.window < 1:
        parser.error("--jobs and --window must be at least 1, --warm-up at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"Clearance soak on {machine()}")
    with tempfile.TemporaryDirectory(prefix="clearance-soak-") as tmp:
        root = Path(tmp)
        env = service_env(root)
        if not args.recycle:
            env["CLEARANCE_WORKER__MAX_TASKS_PER_CHILD"] = str(10 * (args.jobs + args.warm_up))
        if args.embedded:
            # The defaults: SQLite and the broker in SQLite, under the data folder.
            run(args, root, env, f"sqlite:///{root / 'var' / 'clearance.db'}")
        else:
            flush_redis(args.redis)
            try:
                with postgres_database(args.postgres) as database_url:
                    env["CLEARANCE_DATABASE_URL"] = database_url
                    env["CLEARANCE_BROKER_URL"] = args.redis
                    run(args, root, env, database_url)
            finally:
                flush_redis(args.redis)
    print(f"load average at the end: {machine(load_only=True)}")


def run(args: argparse.Namespace, root: Path, env: dict[str, str], database_url: str) -> None:
    with Stack(root, env) as stack:
        key = stack.requester_key()
        stack.start_api()
        soak(args, stack, key, database_url)


if __name__ == "__main__":
    main()

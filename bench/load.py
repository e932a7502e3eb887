"""Load on this machine: job submission latency at rising rates, pipeline throughput, and the
orchestration overhead of a job.

    python bench/load.py [--rates 10,20,30,40,50,75,100] [--seconds 10] [--jobs 30] [--workers 1,2]
    python bench/load.py --quick          # a tiny configuration, to see that it runs

1. Submission: `clearance serve --no-worker` (uvicorn) on a fresh PostgreSQL database with a
   Redis broker and no worker. POST /v1/jobs at each rate, open loop: request i is sent at
   start + i/rate whether or not earlier ones have answered, and its latency counts from
   that moment, so a slow server cannot slow the load down and hide its own queueing.
   Prints p50/p99 latency per rate and the highest rate with p99 under --p99-ms (50 ms).
   Escalation stops at the first rate the API cannot keep up with.
2. Throughput: the tiny model pipeline on Redis and PostgreSQL with 1 and 2 workers
   (`clearance worker --concurrency 1` each), warmed up until every worker has run every
   stage (loaded every model), and with no pool child recycled during the run: --jobs jobs
   submitted at once, jobs per minute from the first submission to the last job settled.
3. Overhead: with one warm, idle worker, jobs one at a time; per job, end-to-end time (created
   to settled, as stored) minus the time inside its stages (each stage row's started_at to
   finished_at): the API's commit and enqueue, the broker and the worker picking the task up,
   and between stages what a task does to go on to the next (the worker consumes both
   queues, so it runs the whole job in one task: pipeline/tasks.py). Mean and p95, target
   <= 20 ms, and where it goes: per transition, and the part outside any task (the worker's
   log says when it received each task and saw it end).

The load generator runs on the same machine as the API, the database and the workers, and
shares its CPUs with them; the figures are for this machine as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa
from harness import (
    JOB,
    JobTiming,
    Stack,
    add_server_options,
    flush_redis,
    machine,
    percentile,
    postgres_database,
    service_env,
    stages_run,
    submit,
    task_spans,
    wait_settled,
)

from pipeline.stages import STAGES

OVERHEAD_TARGET_MS = 20.0
# Past this p99, or with more than 1% of requests failing, a higher rate only adds a queue.
SATURATED_P99_S = 2.0
WARM_UP_REQUESTS = 20
WARM_UP_BATCHES = 10


@dataclass(frozen=True)
class RateResult:
    rate: float
    sent: int
    latencies_s: list[float]
    errors: Counter[str]
    seconds: float

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_s, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_s, 99) * 1000

    @property
    def saturated(self) -> bool:
        return (
            not self.latencies_s
            or sum(self.errors.values()) > self.sent / 100
            or self.p99_ms / 1000 > SATURATED_P99_S
        )


async def _at_rate(client: httpx.AsyncClient, rate: float, seconds: float) -> RateResult:
    loop = asyncio.get_running_loop()
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def one(index: int, due: float) -> None:
        body = {**JOB, "prompt": f"a lighthouse in a storm, take {index}", "seed": index}
        try:
            response = await client.post("/v1/jobs", json=body)
        except httpx.HTTPError as e:
            errors[type(e).__name__] += 1
            return
        if response.status_code == 201:
            latencies.append(loop.time() - due)
        else:
            errors[str(response.status_code)] += 1

    start = loop.time() + 0.1
    pending = []
    for index in range(count):
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        pending.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*pending)
    return RateResult(rate, count, latencies, errors, loop.time() - start)


async def _submission_latency(
    api_url: str, key: str, rates: Sequence[float], seconds: float
) -> list[RateResult]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60
    ) as client:
        await _at_rate(client, WARM_UP_REQUESTS, 1.0)  # connections open, caches warm
        results = []
        for rate in rates:
            result = await _at_rate(client, rate, seconds)
            results.append(result)
            print(_rate_row(result), flush=True)
            if result.saturated:
                print(f"  (stopping: the API does not keep up with {rate:g} req/s)")
                break
        return results


def _rate_row(r: RateResult) -> str:
    failed = sum(r.errors.values())
    done = len(r.latencies_s) / r.seconds if r.seconds else 0.0
    figures = f"{r.p50_ms:8.1f} {r.p99_ms:8.1f}" if r.latencies_s else f"{'-':>8} {'-':>8}"
    errors = f"  errors: {dict(r.errors)}" if failed else ""
    return f"  {r.rate:7g} {r.sent:6d} {len(r.latencies_s):6d} {done:8.1f} {figures}{errors}"


def submission_latency(args: argparse.Namespace, stack: Stack, key: str) -> None:
    print(
        f"\nSubmission latency: POST /v1/jobs, open loop, {args.seconds:g} s per rate "
        "(uvicorn, PostgreSQL, Redis broker, no worker)"
    )
    print(f"  {'rate/s':>7} {'sent':>6} {'ok':>6} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    results = asyncio.run(_submission_latency(stack.api_url, key, args.rates, args.seconds))
    fast = [r.rate for r in results if not r.errors and r.latencies_s and r.p99_ms < args.p99_ms]
    best = (
        f"{max(fast):g} req/s"
        if fast
        else f"none of the rates tried ({args.rates[0]:g} req/s and up)"
    )
    print(f"highest rate with p99 < {args.p99_ms:g} ms: {best}")


def _run_jobs(
    client: httpx.Client, engine: sa.Engine, count: int, label: str, timeout_s: float
) -> tuple[list[JobTiming], float]:
    """Submit `count` jobs at once; their timings, and the seconds until the last settled."""
    started = time.monotonic()
    ids = [submit(client, f"{label} {i}: a lighthouse in a storm", i) for i in range(count)]
    timings = wait_settled(engine, ids, timeout_s)
    return timings, time.monotonic() - started


def _states(timings: Sequence[JobTiming]) -> str:
    return ", ".join(f"{n} {state}" for state, n in Counter(t.state for t in timings).items())


def _overhead(
    stack: Stack, worker: str, client: httpx.Client, engine: sa.Engine, jobs: int
) -> None:
    timings = [_run_jobs(client, engine, 1, f"overhead {i}", 300)[0][0] for i in range(jobs)]
    overhead_ms = [t.overhead_s * 1000 for t in timings]
    # The worker ran nothing else meanwhile: the tasks it logged in a job's time are the job's.
    # A task ends a little after the job settled (its acknowledgement): count it to settled.
    spans = task_spans(stack.root / f"{worker}.log")
    between_ms = [
        (
            t.end_to_end_s
            - sum(
                (min(end, t.settled_at) - start).total_seconds()
                for start, end in spans
                if t.created_at <= start <= t.settled_at
            )
        )
        * 1000
        for t in timings
    ]
    print(
        f"\nOrchestration overhead per job: 1 warm worker, {jobs} jobs one at a time "
        f"({_states(timings)})"
    )
    print(
        f"  end-to-end mean {statistics.mean(t.end_to_end_s for t in timings) * 1000:.1f} ms, "
        f"of which outside stages: mean {statistics.mean(overhead_ms):.1f} ms, "
        f"p95 {percentile(overhead_ms, 95):.1f} ms (target <= {OVERHEAD_TARGET_MS:g} ms)"
    )
    transitions = dict.fromkeys(g for t in timings for g in t.gaps)
    parts = [
        f"{name} {statistics.mean(t.gaps.get(name, 0.0) for t in timings) * 1000:.1f}"
        for name in transitions
    ]
    print(f"  mean ms per transition: {', '.join(parts)}")
    print(
        f"  outside any task (API commit and enqueue, broker, hand-over to the worker; from "
        f"the worker's log, to the ms): mean {statistics.mean(between_ms):.1f} ms, "
        f"p95 {percentile(between_ms, 95):.1f} ms; the rest is inside the stage tasks, before "
        "and after the stages' own stamps (claim and result transactions)"
    )


def _warm_up(
    stack: Stack, workers: Sequence[str], client: httpx.Client, engine: sa.Engine, batch: int
) -> None:
    """Run batches of jobs until every worker has run every stage: a worker process loads
    the models a stage needs on its first task of that stage, and which worker takes which
    task is up to the broker."""
    for attempt in range(WARM_UP_BATCHES):
        _run_jobs(client, engine, batch * len(workers), f"warm-up {attempt}", 600)
        if all(stages_run(stack.root / f"{name}.log") >= set(STAGES) for name in workers):
            return
    raise RuntimeError(f"after {WARM_UP_BATCHES} warm-up batches a worker had not run every stage")


def pipeline(args: argparse.Namespace, stack: Stack, key: str, database_url: str) -> None:
    engine = sa.create_engine(database_url)
    headers = {"Authorization": f"Bearer {key}"}
    print(
        f"\nPipeline throughput: tiny model, Redis broker, PostgreSQL, {args.jobs} jobs "
        "submitted at once, after a warm-up"
    )
    try:
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
            for workers in args.workers:
                names = [f"worker-{workers}-{n}" for n in range(workers)]
                for name in names:
                    stack.start_worker(name)
                _warm_up(stack, names, client, engine, args.warm_up)
                timings, seconds = _run_jobs(client, engine, args.jobs, f"run {workers}", 1800)
                print(
                    f"  {workers} worker{'s' if workers > 1 else ' '}: "
                    f"{len(timings) / seconds * 60:6.1f} jobs/min "
                    f"({len(timings)} jobs in {seconds:.1f} s: {_states(timings)})",
                    flush=True,
                )
                if workers == 1 and args.overhead_jobs:
                    _overhead(stack, names[0], client, engine, args.overhead_jobs)
                for name in names:
                    stack.stop(name)
    finally:
        engine.dispose()


def _numbers(text: str) -> list[float]:
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected numbers separated by commas"
        ) from None
    if not numbers or min(numbers) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be above 0")
    return numbers


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates",
        type=_numbers,
        default=[10, 20, 30, 40, 50, 75, 100, 150, 200],
        help="submission rates to try, in requests per second, until the API cannot keep up "
        "(default: 10,20,30,40,50,75,100,150,200)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="seconds per rate (default 10)")
    parser.add_argument(
        "--p99-ms", type=float, default=50, help="the latency target of submission (default 50)"
    )
    parser.add_argument("--jobs", type=int, default=30, help="jobs per throughput run (default 30)")
    parser.add_argument(
        "--workers",
        type=lambda t: [int(n) for n in _numbers(t)],
        default=[1, 2],
        help="worker counts to measure throughput with (default: 1,2)",
    )
    parser.add_argument(
        "--overhead-jobs",
        type=int,
        default=20,
        help="jobs run one at a time to measure the overhead (default 20; 0: skip)",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=2,
        help="warm-up jobs per worker and batch, until every worker has run every stage "
        "(default 2)",
    )
    parser.add_argument("--skip-submission", action="store_true", help="measure the pipeline only")
    parser.add_argument(
        "--skip-pipeline", action="store_true", help="measure submission latency only"
    )
    add_server_options(parser, redis_db=12)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny configuration that only shows it runs: rates 5,10 for 1 s; 1 worker, "
        "1 warm-up job a batch, 2 jobs at once, 1 overhead job",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.workers = [5, 10], 1, [1]
        args.warm_up, args.jobs, args.overhead_jobs = 1, 2, 1
    if args.jobs < 1 or args.warm_up < 1 or args.overhead_jobs < 0:
        parser.error("--jobs and --warm-up must be at least 1, --overhead-jobs at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"Clearance load benchmark on {machine()}")
    with (
        tempfile.TemporaryDirectory(prefix="clearance-load-") as tmp,
        postgres_database(args.postgres) as database_url,
    ):
        root = Path(tmp)
        flush_redis(args.redis)
        env = service_env(root) | {
            "CLEARANCE_DATABASE_URL": database_url,
            "CLEARANCE_BROKER_URL": args.redis,
            # No fresh pool child (which loads every model again) in the middle of a run:
            # production recycles one every 200 tasks (up to 200 jobs on a worker consuming
            # both queues, which runs a job in one task); bench/soak.py measures why.
            "CLEARANCE_WORKER__MAX_TASKS_PER_CHILD": str(10**6),
        }
        try:
            with Stack(root, env) as stack:
                key = stack.requester_key()
                stack.start_api()
                if not args.skip_submission:
                    submission_latency(args, stack, key)
                    # The jobs submitted above wait in the broker; no worker is to run them.
                    flush_redis(args.redis)
                if not args.skip_pipeline:
                    pipeline(args, stack, key, database_url)
        finally:
            flush_redis(args.redis)
    print(f"\nload average at the end: {machine(load_only=True)}")


if __name__ == "__main__":
    main()

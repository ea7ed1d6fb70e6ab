"""
PostgreSQL failing the workers: connections terminated under them, a reply lost after the server committed a job's
start, work horses killed inside their transaction, and the database unreachable for a few seconds or for longer than
``stuck_after``.
"""

import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from netbox_safejobs.testing.fixtures import second_connection

from .core import HARNESS_TAG, WorkerPool, scenario
from .proxies import DatabaseGate, ReplyCutter, database_server
from .support import collect, enqueue_many, read_runs, wait_horse, wait_tasks_ended, wait_until_settled

__all__ = (
    'scenario_db_terminated',
    'scenario_horse_sessions',
    'scenario_lost_claim_reply',
    'scenario_pg_blip',
    'scenario_pg_outage',
)


@scenario
def scenario_db_terminated(ctx, mode, opts, runs_file):
    """Database connections of the workers terminated (pg_terminate_backend) every 0.5 s while they take jobs."""
    from django.db import connection

    committed, _, _, _ = enqueue_many(opts.fault_jobs * 2, threads=2)
    settings = connection.settings_dict
    stop = threading.Event()
    terminated = [0]
    connection.ensure_connection()
    # Only the workers' connections: not this process's own, nor the terminator's.
    spared = [connection.connection.info.backend_pid]

    def terminator():
        with second_connection(connection) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid() AND backend_type = 'client backend' AND pid <> ALL(%s)",
                    [settings['NAME'], spared],
                ).fetchall()
                terminated[0] += len(rows)
                stop.wait(0.5)

    pool = WorkerPool(ctx, mode, runs_file)
    # Not during start-up: a worker whose connection is terminated while it schedules the system jobs exits (any
    # NetBox version), which is not the failure this scenario is about.
    pool.wait_ready()
    thread = threading.Thread(target=terminator)
    thread.start()
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        stop.set()
        thread.join()
    try:
        # What the workers' own loops do next: close the jobs of work horses that died with their connection.
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, extra={'connections_terminated': terminated[0]})


@scenario
def scenario_lost_claim_reply(ctx, mode, opts, runs_file):
    """
    A worker's database connection lost after the server committed the statement that starts a job (the plugin's
    claim, stock NetBox's ``Job.start()``) and before its reply reached the worker, once for every job: a proxy between
    the workers and PostgreSQL lets the statement commit, then closes the worker's connection instead of answering.
    """
    from netbox_safejobs.models import JobDispatch, RetryEvent

    committed, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
    proxy = ReplyCutter(database_server(), committed).start()
    pool = WorkerPool(ctx, mode, runs_file, db_port=proxy.port)
    try:
        wait_tasks_ended(committed, timeout=opts.timeout)
        # Then whatever the workers' own loops still do about the rows (the plugin's liveness check, if anything).
        wait_until_settled(committed, timeout=opts.timeout, idle=5, pool=pool)
    finally:
        pool.stop()
        proxy.stop()
    events = Counter(RetryEvent.objects.filter(job_uuid__in=committed).values_list('kind', flat=True))
    return collect(committed, [], runs_file, extra={
        'replies_cut': len(proxy.cut), 'cut_statements': dict(Counter(s.split()[0] for s in proxy.cut.values())),
        'events': dict(events),
        # Leases (and stored pushes) still held: a retried claim must release the lease its lost reply took.
        'dispatch_rows_left': JobDispatch.objects.filter(job__job_id__in=committed).count(),
    })


@scenario
def scenario_horse_sessions(ctx, mode, opts, runs_file):
    """
    One worker: a work horse killed inside its transaction (SIGKILL, as the OOM killer does), then four jobs, then
    another horse killed inside its transaction. Each horse must have a PostgreSQL session of its own, each killed job
    be closed at once, and no killed transaction commit.
    """
    from core.models import Job
    from extras.models import Tag

    from benchmarks.runners import HarnessJob

    sessions_file = Path(f'{runs_file}.sessions')
    sessions_file.unlink(missing_ok=True)
    pool = WorkerPool(ctx, mode, runs_file, count=1)
    killed, closed_after, committed = [], [], []

    def kill_inside_transaction():
        job = HarnessJob.enqueue(hold=120)
        committed.append(job.job_id)
        pid = wait_horse(runs_file, job.job_id)
        time.sleep(0.5)  # inside its transaction by now
        os.kill(pid, signal.SIGKILL)
        at = time.monotonic()
        killed.append(job.job_id)
        deadline = at + 30
        while time.monotonic() < deadline:
            if Job.objects.filter(job_id=job.job_id).exclude(status='running').exists():
                closed_after.append(round(time.monotonic() - at, 2))
                return
            time.sleep(0.1)
        closed_after.append(None)

    try:
        pool.wait_ready()
        kill_inside_transaction()
        jobs = [HarnessJob.enqueue(session=True).job_id for _ in range(4)]
        committed += jobs
        wait_until_settled(jobs, timeout=opts.timeout, idle=20, pool=pool)
        kill_inside_transaction()
    finally:
        pool.stop()
    sessions = {}
    if sessions_file.exists():
        for line in sessions_file.read_text().splitlines():
            job_uuid, backend, tls = line.split()
            sessions[uuid.UUID(job_uuid)] = (int(backend), tls)
    distinct = len({sessions[u][0] for u in jobs if u in sessions})
    return collect(committed, [], runs_file, extra={
        'killed': len(killed),
        'closed_s_after_kill': ', '.join('never' if c is None else str(c) for c in closed_after),
        'shared_sessions': len(jobs) - distinct,
        'tls_sessions': sum(1 for _, tls in sessions.values() if tls == 'tls'),
        'killed_transactions_committed': Tag.objects.filter(slug__in=[f'{HARNESS_TAG}{u}' for u in killed]).count(),
    })


@scenario
def scenario_pg_blip(ctx, mode, opts, runs_file):
    """
    PostgreSQL unreachable for ``--db-blip-seconds`` (6) while one worker works through a queue of jobs: every job
    must run once, soon after the database answers again.
    """
    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import RetryEvent

    gate = DatabaseGate(database_server()).start()
    committed = [HarnessJob.enqueue(sleep=0.3).job_id for _ in range(opts.fault_jobs)]
    pool = WorkerPool(ctx, mode, runs_file, count=1, db_port=gate.port)
    after = first = None
    try:
        wait_horse(runs_file, committed[0])
        gate.down()
        time.sleep(opts.db_blip_seconds)
        gate.up()
        back = time.time()
        if wait_until_settled(committed, timeout=opts.timeout, idle=30, pool=pool):
            _, starts = read_runs(runs_file)
            after = round(max(starts.get(u, 0) for u in committed) - back, 2)
            # The first job to start once PostgreSQL answered: how long the worker took to notice it. The last one
            # also waits for the jobs before it, one work horse after another (0.3 s of work each).
            first = round(min((starts[u] for u in committed if starts.get(u, 0) > back), default=back) - back, 2)
    finally:
        pool.stop()
        gate.stop()
    events = Counter(RetryEvent.objects.filter(job_uuid__in=committed).values_list('kind', flat=True))
    return collect(committed, [], runs_file, extra={
        'db_down_s': opts.db_blip_seconds, 'first_ran_s_after_db_back': first, 'all_ran_s_after_db_back': after,
        'events': dict(events),
    })


@scenario
def scenario_pg_outage(ctx, mode, opts, runs_file):
    """
    PostgreSQL unreachable for ``--db-outage-seconds`` (75: longer than ``stuck_after``, as a restart or a failover
    can be) while a periodic job of ``--long-job-seconds`` (100) runs, two workers: the live job must not be closed,
    its horse must not undo a close, and the job must get one next run.
    """
    from core.models import Job

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import RetryEvent

    gate = DatabaseGate(database_server()).start()
    job = HarnessJob.enqueue(sleep=opts.long_job_seconds, interval=24 * 60)
    pool = WorkerPool(ctx, mode, runs_file, count=2, db_port=gate.port)
    try:
        pool.wait_ready()
        wait_horse(runs_file, job.job_id)
        time.sleep(2)
        gate.down()
        time.sleep(opts.db_outage_seconds)
        gate.up()
        deadline = time.monotonic() + opts.long_job_seconds + 120
        while time.monotonic() < deadline and Job.objects.filter(job_id=job.job_id, status='running').exists():
            time.sleep(1)
        time.sleep(5)  # whatever the horse's end and the loops still do
    finally:
        pool.stop()
        gate.stop()
    closed = RetryEvent.objects.filter(job_uuid=job.job_id, kind='stuck_errored').count()
    next_runs = Job.objects.filter(name=HarnessJob.name, interval=24 * 60, status='scheduled').count()
    return collect([job.job_id], [], runs_file, extra={
        'db_down_s': opts.db_outage_seconds,
        'live_jobs_closed': closed,
        'next_runs': next_runs,
        'extra_next_runs': max(0, next_runs - 1),
    })

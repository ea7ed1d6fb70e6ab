"""
Faults on the callers' side of an enqueue: transactions racing the workers and rolled back, a process killed between
its commit and its push, rows deleted before a worker takes them, a task pushed twice, relays racing each other, and
callers that catch an enqueue error and go on.
"""

import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from netbox_safejobs.testing.fixtures import netbox_command, push_directly

from .core import HARNESS_TAG, QUEUES, WorkerPool, scenario
from .support import collect, enqueue_many, wait_until_settled, while_redis_down

__all__ = (
    'scenario_caller_catches',
    'scenario_concurrent_relays',
    'scenario_crash_after_commit',
    'scenario_deleted_rows',
    'scenario_duplicate_push',
    'scenario_race',
)


@scenario
def scenario_race(ctx, mode, opts, runs_file):
    """N jobs, each enqueued in a transaction held open ``hold`` s, a share rolled back, K workers racing."""
    rng = random.Random(42)
    plan = [rng.random() < opts.rollback_share for _ in range(opts.jobs)]
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        pool.wait_ready()  # the workers must be listening, so that they race the enqueues
        committed, rolled_back, exceptions, commit_times = enqueue_many(
            opts.jobs, threads=opts.threads, hold=opts.hold, rollback=lambda i: plan[i],
        )
        wait_until_settled(committed, timeout=opts.timeout, pool=pool)
        time.sleep(1)
    finally:
        pool.stop()
    return collect(committed, rolled_back, runs_file, caller_exceptions=exceptions)


CRASH_SCRIPT = """
import os, signal
from django.db import transaction
from benchmarks.runners import HarnessJob
with transaction.atomic():
    # Runs first after COMMIT: the process dies before any push.
    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    job = HarnessJob.enqueue()
    print(job.job_id, flush=True)
"""


@scenario
def scenario_crash_after_commit(ctx, mode, opts, runs_file):
    """Processes SIGKILLed between COMMIT and the push to Redis; the workers' relay owes them after 10 s."""
    procs = [
        subprocess.Popen(netbox_command('shell', '--command', CRASH_SCRIPT),
                         env=ctx.env(mode), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(opts.crashes)
    ]
    committed = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        committed += [uuid.UUID(line) for line in out.split() if len(line) == 36]
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=20, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file)


@scenario
def scenario_deleted_rows(ctx, mode, opts, runs_file):
    """Job rows deleted (as housekeeping does, a queryset delete) after the push, before a worker takes the task."""
    from core.models import Job
    from django_rq import get_queue

    committed, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
    Job.objects.filter(job_id__in=committed).delete()
    pool = WorkerPool(ctx, mode, runs_file, burst=True)
    pool.wait(timeout=opts.timeout)
    return collect([], [], runs_file, deleted=committed, extra={
        'deleted': len(committed), 'left_in_queue': get_queue('default').count,
    })


@scenario
def scenario_duplicate_push(ctx, mode, opts, runs_file):
    """Every task pushed twice (a requeue, a recovery racing a slow push)."""
    from core.models import Job

    from benchmarks.runners import HarnessJob

    committed, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
    for job in Job.objects.filter(job_id__in=committed):
        push_directly(job, HarnessJob, rq_job_id=str(uuid.uuid4()))
    pool = WorkerPool(ctx, mode, runs_file, burst=True)
    pool.wait(timeout=opts.timeout)
    return collect(committed, [], runs_file)


@scenario
def scenario_concurrent_relays(ctx, mode, opts, runs_file):
    """
    ``opts.owed`` pushes owed (Redis was down at their commit), then 8 relay passes in 8 processes at once: each task
    must reach Redis once (plugin only: stock NetBox has no stored push to send).
    """
    from django_rq import get_queue

    from netbox_safejobs.models import RetryEvent

    if mode == 'stock':
        return {'skipped': 'no stored pushes in stock NetBox'}
    (committed, _, errors, _), _ = while_redis_down(ctx, 0, lambda: enqueue_many(opts.owed, threads=4))
    procs = [subprocess.Popen(netbox_command('safejobs_recover'), env=ctx.env(mode), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(8)]
    for p in procs:
        p.wait(timeout=opts.timeout)
    queued = Counter()
    for name in QUEUES:
        queued.update(get_queue(name).get_job_ids())
    double = sum(1 for count in queued.values() if count > 1)
    missing = len({str(u) for u in committed} - set(queued))
    return {
        'owed_pushes': len(committed), 'relays': len(procs), 'pushed': sum(queued.values()),
        'double_sends': double, 'not_sent': missing,
        'duplicate_skipped': RetryEvent.objects.filter(kind='duplicate_skipped').count(),
        'caller_exceptions': sum(errors.values()), 'lost': missing, 'duplicate_runs': double,
    }


@scenario
def scenario_caller_catches(ctx, mode, opts, runs_file):
    """
    Callers that, inside ``transaction.atomic()``, save an object (a Tag), enqueue a job, call an enqueue that raises
    (a name too long for Job.full_clean), catch the error and go on: save again, enqueue another job, commit.
    The caller's transaction must stay usable and keep its data; the valid jobs must each run once.
    """
    from django.core.exceptions import ValidationError
    from django.db import connection, transaction
    from extras.models import Tag

    from benchmarks.runners import HarnessJob

    committed, broken, caught, lock = [], Counter(), Counter(), threading.Lock()
    after_error = 'saved after the caught enqueue error'

    def caller(i):
        slug = f'{HARNESS_TAG}{mode}-{i}'
        jobs = []
        try:
            with transaction.atomic():
                tag = Tag.objects.create(name=slug, slug=slug)
                jobs.append(HarnessJob.enqueue().job_id)
                try:
                    HarnessJob.enqueue(name='x' * 300)
                except ValidationError as e:
                    with lock:
                        caught[type(e).__name__] += 1
                tag.description = after_error
                tag.save()
                jobs.append(HarnessJob.enqueue().job_id)
        except Exception as e:
            with lock:
                broken[type(e).__name__] += 1
            return
        with lock:
            committed.extend(jobs)

    def run_callers(indices):
        try:
            for i in indices:
                caller(i)
        finally:
            connection.close()

    # The callers do not wait for the workers to be listening: their jobs queue up meanwhile.
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        threads = 4
        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(run_callers, [range(t, opts.fault_jobs, threads) for t in range(threads)]))
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        pool.stop()
    kept = Tag.objects.filter(slug__startswith=f'{HARNESS_TAG}{mode}-', description=after_error).count()
    return collect(committed, [], runs_file, caller_exceptions=broken, extra={
        'callers': opts.fault_jobs, 'enqueue_errors_caught': sum(caught.values()),
        'callers_broken': opts.fault_jobs - kept, 'saved_kept': kept,
    })

"""
What the scenarios share: reading the runs file the harness's jobs write, waiting for jobs to run or settle, enqueuing
in bulk, keeping Redis down while something runs, the outcome of a scenario as the database, Redis and the runs file
tell it, and the cleanup between scenarios.
"""

import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from .core import HARNESS_TAG, QUEUES

__all__ = (
    'cleanup',
    'collect',
    'enqueue_many',
    'percentile',
    'read_runs',
    'rq_failures',
    'wait_horse',
    'wait_running',
    'wait_tasks_ended',
    'wait_until_settled',
    'while_redis_down',
)


def read_runs(runs_file, pids=None):
    """Runs per job and the time of each job's first run (and, into ``pids``, the process that ran it)."""
    runs = Counter()
    starts = {}
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            job_uuid, at, pid = line.split()
            runs[uuid.UUID(job_uuid)] += 1
            starts.setdefault(uuid.UUID(job_uuid), float(at))
            if pids is not None:
                pids[uuid.UUID(job_uuid)] = int(pid)
    return runs, starts


def wait_running(runs_file, job_uuids, timeout=120, interval=0.2):
    """
    Wait until every job is inside run(); {job UUID: pid of the work horse running it} (the runs file says), for
    every job of the runs file.
    """
    pids = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        read_runs(runs_file, pids)
        if all(job_uuid in pids for job_uuid in job_uuids):
            break
        time.sleep(interval)
    return pids


def wait_horse(runs_file, job_uuid, timeout=120):
    """The pid of the work horse running ``job_uuid`` (once it is inside ``run()``), or None after ``timeout``."""
    return wait_running(runs_file, [job_uuid], timeout, interval=0.1).get(job_uuid)


def rq_failures():
    """RQ failed-registry entries by exception type, over the harness's queues."""
    from django_rq import get_queue
    from rq.registry import FailedJobRegistry

    by_type = Counter()
    for name in QUEUES:
        queue = get_queue(name)
        registry = FailedJobRegistry(queue=queue)
        for rq_job in queue.job_class.fetch_many(registry.get_job_ids(), connection=queue.connection):
            if rq_job is None:
                continue
            exc = (rq_job.exc_info or '').strip().splitlines()
            by_type[exc[-1].split(':')[0] if exc else 'unknown'] += 1
    return dict(by_type)


def wait_until_settled(job_uuids, timeout, idle=20, terminal_only=True, pool=None):
    """
    Wait until every job is completed/errored/failed, or nothing changed for ``idle`` seconds while every worker of
    ``pool`` was up (a worker still starting, after a restart or on a loaded machine, is not "nothing happening").
    """
    from core.models import Job

    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        done = Job.objects.filter(job_id__in=job_uuids, status__in=('completed', 'errored', 'failed')).count()
        if done >= len(job_uuids):
            return True
        if done != last or (pool is not None and not pool.ready()):
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > idle:
            return False
        time.sleep(0.5)
    return False


def wait_tasks_ended(job_uuids, timeout):
    """
    Wait until the RQ task of every job has ended (finished, failed, stopped or canceled) or is gone from Redis: once
    it has, stock NetBox never changes the job's row again, so there is nothing more to wait for.
    """
    from django_rq import get_queue
    from rq.job import JobStatus

    queue = get_queue('default')
    ended = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = queue.job_class.fetch_many([str(u) for u in job_uuids], connection=queue.connection)
        if all(task is None or task.get_status(refresh=False) in ended for task in tasks):
            return True
        time.sleep(0.5)
    return False


def collect(committed, rolled_back, runs_file, deleted=(), caller_exceptions=None, extra=None):
    """The outcome of a scenario from the database, Redis and the runs file."""
    from core.models import Job

    committed, rolled_back, deleted = set(committed), set(rolled_back), set(deleted)
    rows = dict(Job.objects.filter(job_id__in=committed | rolled_back | deleted).values_list('job_id', 'status'))
    runs, _ = read_runs(runs_file)
    statuses = Counter(rows[u] for u in committed - deleted if u in rows)
    result = {
        'jobs': len(committed) + len(rolled_back),
        'committed': len(committed),
        'rolled_back': len(rolled_back),
        'completed': statuses['completed'],
        'errored': statuses['errored'] + statuses['failed'],
        'left_pending': statuses['pending'] + statuses['scheduled'],
        'left_running': statuses['running'],
        # A job lost: committed, still there, and never going to run or finish.
        'lost': statuses['pending'] + statuses['scheduled'] + statuses['running'],
        'ghost_rows': len(rolled_back & set(rows)),
        'resurrected': len(deleted & set(rows)),
        'runs': sum(runs.values()),
        'duplicate_runs': sum(1 for u, c in runs.items() if c > 1),
        'rq_failed': rq_failures(),
        'caller_exceptions': sum((caller_exceptions or Counter()).values()),
        'caller_exception_types': dict(caller_exceptions or {}),
    }
    result.update(extra or {})
    return result


def percentile(values, q):
    """The ``q`` quantile (0.5, 0.99), interpolated between the nearest values; ``None`` without values."""
    values = list(values)
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method='inclusive')[round(q * 100) - 1]


def cleanup():
    from core.models import Job
    from django_rq import get_connection
    from extras.models import Tag

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import JobDispatch, RetryEvent

    uuids = list(Job.objects.filter(name=HarnessJob.name).values_list('job_id', flat=True))
    RetryEvent.objects.filter(job_name=HarnessJob.name).delete()
    JobDispatch.objects.filter(job__name=HarnessJob.name).delete()
    Job.objects.filter(name=HarnessJob.name).delete()
    Tag.objects.filter(slug__startswith=HARNESS_TAG).delete()
    get_connection('default').flushdb()
    return len(uuids)


def enqueue_many(count, threads=8, hold=0.0, rollback=None, rate=None, until=None):
    """
    Enqueue ``count`` HarnessJobs (or as many as fit before the monotonic time ``until``), each in its own
    transaction held open ``hold`` seconds after the enqueue; ``rollback(i)`` says which to roll back.
    Returns (committed, rolled_back, exceptions, commit_times).
    """
    from django.db import connection, transaction

    from benchmarks.runners import HarnessJob

    committed, rolled_back, commit_times, exceptions = [], [], {}, Counter()
    lock = threading.Lock()

    class Rollback(Exception):
        pass

    def one(i):
        job_uuid = None
        try:
            with transaction.atomic():
                job = HarnessJob.enqueue()
                job_uuid = job.job_id
                if hold:
                    time.sleep(hold)
                if rollback and rollback(i):
                    raise Rollback
            with lock:
                committed.append(job_uuid)
                commit_times[job_uuid] = time.time()
        except Rollback:
            with lock:
                rolled_back.append(job_uuid)
        except Exception as e:
            with lock:
                exceptions[type(e).__name__] += 1
                if job_uuid is not None:
                    # Raised after COMMIT (an on-commit push failing): the row is committed all the same.
                    committed.append(job_uuid)
        finally:
            if rate:
                time.sleep(rate)

    def worker(indices):
        try:
            for i in indices:
                if until is not None and time.monotonic() >= until:
                    break
                one(i)
        finally:
            connection.close()

    total = count if count is not None else 10**9
    chunks = [range(t, total, threads) for t in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, chunks))
    return committed, rolled_back, exceptions, commit_times


def while_redis_down(ctx, seconds, enqueue):
    """Stop Redis, run ``enqueue()`` while it is down, keep it down ``seconds`` in all, start it (empty)."""
    ctx.redis.stop()
    started = time.monotonic()
    result = enqueue()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    ctx.redis.start()
    return result, time.time()

"""
Redis losing what it holds: outages with jobs enqueued meanwhile, a flush under running jobs, a restart from an older
snapshot, and pushes owed across a rotation of ``SECRET_KEY``.
"""

import os
import threading
import time
from collections import Counter

from .core import WorkerPool, scenario
from .support import (
    collect,
    enqueue_many,
    percentile,
    read_runs,
    wait_running,
    wait_until_settled,
    while_redis_down,
)

__all__ = (
    'OUTAGES',
    'scenario_key_rotation',
    'scenario_redis_flushed',
    'scenario_redis_outage',
    'scenario_redis_outages',
    'scenario_silent_redis',
    'scenario_snapshot_restore',
)


# Seconds Redis stays down in each outage of the redis_outages scenario.
OUTAGES = (1, 3, 5, 7, 10)


@scenario
def scenario_redis_outage(ctx, mode, opts, runs_file):
    """Redis stopped during a burst of enqueues, then started again, empty (no persistence)."""
    pool = WorkerPool(ctx, mode, runs_file)
    back_at = {}
    up, down = opts.outage_seconds, opts.outage_seconds

    def outage():
        time.sleep(up)
        ctx.redis.stop()
        time.sleep(down)
        ctx.redis.start()
        back_at['t'] = time.time()

    try:
        pool.wait_ready()
        timer = threading.Thread(target=outage)
        timer.start()
        deadline = time.monotonic() + up + down + up
        committed, _, exceptions, _ = enqueue_many(None, threads=1, rate=0.01, until=deadline)
        timer.join()
        settled = wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
        all_ran_after = None
        if settled:
            _, starts = read_runs(runs_file)
            all_ran_after = round(max(starts.get(u, 0) for u in committed) - back_at['t'], 2)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, caller_exceptions=exceptions,
                   extra={'all_ran_s_after_redis_back': all_ran_after, 'outage_s': down})


@scenario
def scenario_redis_outages(ctx, mode, opts, runs_file):
    """
    Five Redis outages of 1 to 10 s, jobs enqueued during each, Redis back empty each time, workers running and never
    restarted by hand: the time from Redis answering again to every job of that outage having run.
    """
    per_outage = max(1, opts.outage_jobs // len(OUTAGES))
    pool = WorkerPool(ctx, mode, runs_file)
    committed, exceptions, latencies = [], Counter(), []
    try:
        pool.wait_ready()
        for seconds in OUTAGES:
            (jobs, _, errors, _), back = while_redis_down(ctx, seconds, lambda: enqueue_many(per_outage, threads=1))
            committed += jobs
            exceptions.update(errors)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                _, starts = read_runs(runs_file)
                if all(u in starts for u in jobs):
                    latencies.append(max(starts[u] for u in jobs) - back)
                    break
                time.sleep(0.02)
        wait_until_settled(committed, timeout=60, idle=10, pool=pool)
    finally:
        pool.stop()
    complete = len(latencies) == len(OUTAGES)
    return collect(committed, [], runs_file, caller_exceptions=exceptions, extra={
        'outages': ', '.join(f'{s}' for s in OUTAGES),
        'ran_s_after_redis_back_p50': round(percentile(latencies, .5), 2) if complete else None,
        'ran_s_after_redis_back_max': round(max(latencies), 2) if complete else None,
    })


@scenario
def scenario_redis_flushed(ctx, mode, opts, runs_file):
    """
    Redis loses its data without an outage (FLUSHALL, a failover to an empty replica) while every worker runs a slow
    job and other jobs wait in the queue: the waiting ones must be sent again, the running ones finish once and are
    not closed.
    """
    from django_rq import get_connection

    from benchmarks.runners import HarnessJob

    slow = [HarnessJob.enqueue(sleep=6).job_id for _ in range(ctx.workers)]
    pool = WorkerPool(ctx, mode, runs_file, count=ctx.workers)
    try:
        pool.wait_ready()
        wait_running(runs_file, slow)
        waiting, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)  # queued behind the slow jobs
        get_connection('default').flushall()
        flushed = time.time()
        settled = wait_until_settled(waiting + slow, timeout=opts.timeout, idle=20, pool=pool)
        after = None
        if settled:
            _, starts = read_runs(runs_file)
            after = round(max(starts.get(u, 0) for u in waiting) - flushed, 2)
    finally:
        pool.stop()
    return collect(waiting + slow, [], runs_file, extra={'all_ran_s_after_flush': after})


ROTATED_SETTINGS = 'safejobs_harness_rotated_settings'


ROTATED_SETTINGS_TEXT = """\
# Written by benchmarks/harness/: NetBox's settings with SECRET_KEY rotated the way Django documents it, a new key
# and the old one in SECRET_KEY_FALLBACKS (a NetBox operator sets them in netbox/local_settings.py).
from netbox.settings import *  # noqa: F403

SECRET_KEY_FALLBACKS = [SECRET_KEY]  # noqa: F405
SECRET_KEY = 'rotated-' + SECRET_KEY[::-1]  # noqa: F405
"""


@scenario
def scenario_key_rotation(ctx, mode, opts, runs_file):
    """
    ``--fault-jobs`` pushes owed while Redis is down; meanwhile ``SECRET_KEY`` is rotated as Django documents it (the
    workers start with the new key, the old one in ``SECRET_KEY_FALLBACKS``); Redis comes back. Every job must run.
    """
    from netbox_safejobs.models import RetryEvent

    settings_dir = ctx.workdir / 'rotated'
    settings_dir.mkdir(exist_ok=True)
    (settings_dir / f'{ROTATED_SETTINGS}.py').write_text(ROTATED_SETTINGS_TEXT)
    ctx.redis.stop()
    try:
        committed, _, exceptions, _ = enqueue_many(opts.fault_jobs, threads=2)
    finally:
        ctx.redis.start()
    env = ctx.env(mode, runs_file)
    env.update(DJANGO_SETTINGS_MODULE=ROTATED_SETTINGS,
               PYTHONPATH=os.pathsep.join([str(settings_dir), env['PYTHONPATH']]))
    pool = WorkerPool(ctx, mode, runs_file, count=1, env=env)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=20, pool=pool)
    finally:
        pool.stop()
    rejected = RetryEvent.objects.filter(job_uuid__in=committed, kind='payload_rejected').count()
    return collect(committed, [], runs_file, caller_exceptions=exceptions, extra={'pushes_rejected': rejected})


@scenario
def scenario_snapshot_restore(ctx, mode, opts, runs_file):
    """
    Redis restarted from an RDB snapshot taken before ``--fault-jobs`` pushes (the relay's marker is in it, the jobs
    are not), while no worker runs; then a worker starts. Every job must run once, soon after the worker starts.
    """
    from django_rq import get_connection

    from netbox_safejobs.models import WorkerHeartbeat

    pool = WorkerPool(ctx, mode, runs_file, count=1)
    pool.wait_ready()
    time.sleep(2)  # the plugin's relay has set its marker
    pool.stop()
    snapshot = ctx.redis.dir / 'dump.rdb'
    after = None
    try:
        get_connection('default').save()
        committed, _, exceptions, _ = enqueue_many(opts.fault_jobs, threads=2)
        ctx.redis.stop()  # SIGKILL: nothing saved on the way out
        ctx.redis.start()  # loads the older snapshot
        started = time.time()
        pool = WorkerPool(ctx, mode, runs_file, count=1)
        try:
            if wait_until_settled(committed, timeout=opts.timeout, idle=20, pool=pool):
                _, starts = read_runs(runs_file)
                after = round(max(starts.get(u, 0) for u in committed) - started, 2)
            beat = WorkerHeartbeat.objects.order_by('started').values_list('started', flat=True).last()
        finally:
            pool.stop()
    finally:
        snapshot.unlink(missing_ok=True)
    return collect(committed, [], runs_file, caller_exceptions=exceptions, extra={
        'all_ran_s_after_worker_start': after,
        'all_ran_s_after_first_heartbeat': (round(max(read_runs(runs_file)[1].get(u, 0) for u in committed)
                                            - beat.timestamp(), 2) if after is not None and beat else None),
    })


@scenario
def scenario_silent_redis(ctx, mode, opts, runs_file):
    """
    Redis accepts connections and never answers (hung, blackholed) while one transaction commits ``opts.fault_jobs``
    jobs: how long the caller is held, and what it gets. Then Redis answers and the workers run what was committed.
    """
    from django.db import transaction

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.testing.queues import override_rq_queues, queues_on, silent_port

    committed, exceptions = [], Counter()
    with silent_port() as port, override_rq_queues(queues_on(port, ctx.redis_db)):
        started = time.monotonic()
        try:
            with transaction.atomic():
                for _ in range(opts.fault_jobs):
                    committed.append(HarnessJob.enqueue().job_id)
        except Exception as e:
            # Stock NetBox: an on-commit push raising after COMMIT; the rows are committed all the same.
            exceptions[type(e).__name__] += 1
        held = time.monotonic() - started
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, caller_exceptions=exceptions,
                   extra={'caller_held_s': round(held, 2)})

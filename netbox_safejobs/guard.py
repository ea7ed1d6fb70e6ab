"""
The worker guard: what happens in the RQ worker before NetBox's own ``JobRunner.handle()`` runs.

The task carries a pickled copy of the Job. Stock NetBox calls ``job.start()`` on it, a ``Model.save()`` that
INSERTs the row when the UPDATE touched nothing: a deleted row comes back (#21129), a row not yet committed makes
the worker block and then fail on a duplicate key (#18880 on NetBox <= 4.2.5, netbox-branching #193), and a stale
snapshot overwrites every column. Instead, the guard

1. *claims* the job in one statement: ``pending``/``scheduled`` → ``running`` on the row as it is in the database,
   returning that row, and marks the job's ``JobDispatch`` row as claimed (erasing the stored push, except for a
   periodic job, whose next run the recovery pass must be able to schedule if the worker dies). A task pushed
   twice finds the row already claimed and is skipped: a job starts at most once;
2. when no row is there, looks again on a backoff schedule, and drops the task, without inserting anything, when
   the row never appears;
3. tells a database error apart from a missing row: it reconnects and retries on a budget of its own, and raises
   when the database stays away, so RQ marks the task failed instead of the job being dropped;
4. runs NetBox's own ``handle()`` on the fresh row, then removes the lease.

The happy path costs one statement before ``handle()`` and one after, and writes no event.
"""

import functools
import logging
import os
import socket
import time

from django.db import InterfaceError, OperationalError, connections, router

from . import backoff, compat, events
from .choices import RetryEventKindChoices
from .settings import get_settings

__all__ = (
    'ClaimResult',
    'claim',
    'release',
    'run',
    'wrap_handle',
)

logger = logging.getLogger('netbox_safejobs.guard')

_HOST = socket.gethostname()[:255]

_DATABASE_ERRORS = (OperationalError, InterfaceError)


class ClaimResult:
    CLAIMED = 'claimed'
    MISSING = 'missing'
    TAKEN = 'taken'


_sql = {}


def _statements():
    """The claim and release statements, built once from the models' metadata."""
    if _sql:
        return _sql
    from core.models import Job

    from .models import JobDispatch

    fields = Job._meta.concrete_fields
    columns = ', '.join(connections['default'].ops.quote_name(f.column) for f in fields)
    job_table = Job._meta.db_table
    dispatch_table = JobDispatch._meta.db_table
    _sql['attnames'] = [f.attname for f in fields]
    _sql['claim'] = f"""
        WITH claimed AS (
            UPDATE {job_table} SET status = %(running)s
            WHERE job_id = %(uuid)s AND status = ANY(%(claimable)s)
            RETURNING {columns}
        ), lease AS (
            INSERT INTO {dispatch_table}
                (job_id, job_uuid, queue_name, runner, method, payload, created, recoveries, claimed,
                 worker_host, worker_pid)
            SELECT id, job_id, %(queue)s, %(runner)s, '', NULL, now(), 0, now(), %(host)s, %(pid)s FROM claimed
            ON CONFLICT (job_id) DO UPDATE SET
                payload = CASE WHEN %(keep_payload)s THEN {dispatch_table}.payload END,
                claimed = EXCLUDED.claimed, worker_host = EXCLUDED.worker_host,
                worker_pid = EXCLUDED.worker_pid
        )
        SELECT {columns} FROM claimed
    """
    _sql['status'] = f'SELECT status FROM {job_table} WHERE job_id = %s'
    _sql['release'] = f'DELETE FROM {dispatch_table} WHERE job_id = %s'
    return _sql


def _claim_once(job, runner, using):
    from core.models import Job

    sql = _statements()
    with connections[using].cursor() as cursor:
        cursor.execute(sql['claim'], {
            'running': compat.RUNNING,
            'uuid': job.job_id,
            'claimable': list(compat.CLAIMABLE_STATES),
            'queue': compat.job_queue_name(job)[:100],
            'runner': events.runner_path(runner)[:255],
            'host': _HOST,
            'pid': os.getpid(),
            # The stored push holds what RQ held, possibly a user's request: erased at the claim. A periodic job keeps
            # it until handle() returns, so that the recovery pass can schedule the next run if the worker dies.
            'keep_payload': bool(job.interval),
        })
        row = cursor.fetchone()
        if row is not None:
            return ClaimResult.CLAIMED, Job.from_db(using, sql['attnames'], row)
        cursor.execute(sql['status'], [job.job_id])
        found = cursor.fetchone()
    if found is None:
        return ClaimResult.MISSING, None
    return ClaimResult.TAKEN, found[0]


def _close(using):
    # A connection broken by the failure (server restarted, backend terminated) must not be reused: Django opens a
    # new one on the next query.
    try:
        connections[using].close()
    except Exception:
        pass


@functools.lru_cache(maxsize=8)
def _schedules(settings):
    """The waits before each look-up retry and each reconnection: computed once per settings, not once per job."""
    lookups = backoff.delays(settings.backoff_schedule, settings.lookup_base_delay, settings.lookup_retries,
                             settings.lookup_max_wait)
    reconnects = backoff.delays(settings.backoff_schedule, settings.lookup_base_delay, settings.database_retries,
                                float('inf'))
    return lookups, reconnects


def claim(runner, job):
    """
    Claim ``job`` for this worker. Returns the Job as it is in the database, now ``running``, or ``None`` when the
    task must not run (the row never appeared, or another task already claimed it).
    """
    from core.models import Job

    using = router.db_for_write(Job)
    lookups, reconnects = _schedules(get_settings())
    common = {'job': job, 'runner': runner}
    retries = failures = 0
    waited = 0.0
    while True:
        try:
            result, value = _claim_once(job, runner, using)
        except _DATABASE_ERRORS as e:
            _close(using)
            if failures >= len(reconnects):
                events.record(RetryEventKindChoices.KIND_DATABASE_ERROR, attempt=failures + 1, using=using,
                              detail=f'{events.describe(e)}. Database still failing after {failures} '
                                     f'reconnection(s); the task is failed in RQ, not dropped.', **common)
                raise
            delay = reconnects[failures]
            failures += 1
            events.record(RetryEventKindChoices.KIND_DATABASE_ERROR, attempt=failures, delay=delay, using=using,
                          detail=f'{events.describe(e)}. Reconnecting and trying again.', **common)
            time.sleep(delay)
            continue

        if result == ClaimResult.CLAIMED:
            if retries:
                events.record(RetryEventKindChoices.KIND_FOUND_AFTER_RETRY, attempt=retries, delay=round(waited, 6),
                              using=using, detail=f'Job row found after {retries} retries, {waited:.3f}s in all.',
                              **common)
            return value

        if result == ClaimResult.TAKEN:
            events.record(RetryEventKindChoices.KIND_DUPLICATE_SKIPPED, using=using,
                          detail=f'Job is already {value}: another copy of this task claimed it. Not run again.',
                          **common)
            return None

        # The row is not there: not committed yet, rolled back, or deleted.
        if retries >= len(lookups):
            events.record(RetryEventKindChoices.KIND_GAVE_UP, attempt=retries, delay=round(waited, 6), using=using,
                          detail=f'Job row not found after {retries} retries, {waited:.3f}s in all (rolled back or '
                                 f'deleted). Task dropped without running; the row was not re-created.',
                          **common)
            return None
        delay = lookups[retries]
        retries += 1
        events.record(RetryEventKindChoices.KIND_RETRY, attempt=retries, delay=delay, using=using,
                      detail='Job row not found (not committed yet, rolled back or deleted); looking again.',
                      **common)
        time.sleep(delay)
        waited += delay


def release(job):
    """Remove the job's lease once ``handle()`` has returned. A failure only leaves work for the recovery pass."""
    from core.models import Job

    using = job._state.db or router.db_for_write(Job)
    try:
        with connections[using].cursor() as cursor:
            cursor.execute(_statements()['release'], [job.pk])
    except _DATABASE_ERRORS as e:
        _close(using)
        logger.warning('job %s: lease not removed (%s); the recovery pass will clean it up', job.job_id, e)


def run(original, runner, job, args, kwargs):
    """Claim, run NetBox's own ``handle()`` on the fresh row, release."""
    fresh = claim(runner, job)
    if fresh is None:
        return None
    try:
        return original(runner, fresh, *args, **kwargs)
    finally:
        release(fresh)


def wrap_handle(original):
    """The wrapper installed as ``JobRunner.handle``; ``original`` is NetBox's function (unbound)."""
    from functools import wraps

    @wraps(original)
    def handle(cls, job, *args, **kwargs):
        return run(original, cls, job, args, kwargs)

    handle.__safejobs_original__ = original
    return handle

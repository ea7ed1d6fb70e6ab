"""
The worker guard: what happens in the RQ worker around NetBox's own ``JobRunner.handle()``.

The task carries a pickled copy of the Job. Stock NetBox calls ``job.start()`` on it, a ``Model.save()`` that
INSERTs the row when the UPDATE touched nothing: a deleted row comes back (#21129), a row not yet committed makes
the worker block and then fail on a duplicate key (#18880 on NetBox <= 4.2.5, netbox-branching #193), and a stale
snapshot overwrites every column. Instead, the guard

1. *claims* the job in one statement: ``pending``/``scheduled`` → ``running`` on the row as it is in the database,
   returning that row, and takes the job's lease in its ``JobDispatch`` row: a token of this attempt, this worker
   (whose heartbeat keeps the lease alive, ``liveness.py``) and this work horse. The stored push is erased; a
   periodic job keeps only its next run's arguments. A task pushed twice finds the row already claimed and is
   skipped: a job starts at most once. A claim whose reply was lost (the connection died after the commit) is
   retried, recognises its own token, and runs the job;
2. when no row is there: a task the plugin pushed after the commit (its RQ meta says so) belongs to a deleted row
   and is dropped at once. Any other task (pushed by stock code, or by a process without the plugin during a
   rolling upgrade) may belong to a row that is still committing: the guard looks again on a backoff schedule and
   drops the task, without inserting anything, when the row never appears;
3. tells a database error apart from a missing row: it reconnects and retries on a budget of its own, and raises
   when the database stays away, so RQ marks the task failed instead of the job being dropped;
4. runs NetBox's own ``handle()`` on the fresh row, saved UPDATE-only from claim to end: a row deleted while the job
   runs is never re-created, the run ends quietly with one event, and a periodic job's next run is not scheduled.

The happy path costs one statement before ``handle()`` and one after, neither waiting for a disk flush
(``_lease_sql``), and writes no event.
"""

import logging
import os
import time
import uuid
from functools import cache, lru_cache, wraps

from django.db import DatabaseError, InterfaceError, OperationalError, connections, router

from . import backoff, compat, dispatch, events, workers
from .choices import CLAIMABLE_STATES, RUNNING, RetryEventKindChoices
from .payload import runner_path, seal_next_run
from .settings import get_settings

__all__ = (
    'ClaimResult',
    'JobLeaseLost',
    'JobNotSaved',
    'JobRowDeleted',
    'claim',
    'release',
    'run',
    'run_nothing',
    'warm',
    'wrap_handle',
)

logger = logging.getLogger('netbox_safejobs.guard')

_DATABASE_ERRORS = (OperationalError, InterfaceError)

# Seconds: the longest wait between two reconnections, so that a database coming back is noticed within it.
RECONNECT_MAX_DELAY = 2.0


class JobNotSaved(Exception):
    """A save of the running job that must not happen: its row is gone, or its run is no longer this attempt's."""


class JobRowDeleted(JobNotSaved):
    """The running job's row was deleted: saving it would re-create it, so the save is refused."""


class JobLeaseLost(JobNotSaved):
    """
    The running job was closed by the liveness check (its worker was judged dead) and its lease removed: this run's
    saves would reopen a closed job (``completed`` over ``errored``) and schedule a periodic job's next run twice.
    """


class ClaimResult:
    CLAIMED = 'claimed'
    MISSING = 'missing'
    TAKEN = 'taken'


@cache
def _statements():
    """The claim and release statements, built once from the models' metadata."""
    from core.models import Job

    from .models import JobDispatch

    fields = Job._meta.concrete_fields
    columns = ', '.join(connections['default'].ops.quote_name(f.column) for f in fields)
    job_table = Job._meta.db_table
    dispatch_table = JobDispatch._meta.db_table
    sql = {}
    sql['attnames'] = [f.attname for f in fields]
    sql['claim'] = f"""
        WITH claimed AS (
            UPDATE {job_table} SET status = %(running)s
            WHERE job_id = %(uuid)s AND status = ANY(%(claimable)s) {{commit}}
            RETURNING {columns}
        ), lease AS (
            INSERT INTO {dispatch_table}
                ({', '.join(dispatch.ROW_COLUMNS)}, claimed, token, worker, worker_host, worker_pid)
            SELECT id, job_id, %(queue)s, %(runner)s, '', %(next_run)s, clock_timestamp(), 0, clock_timestamp(),
                   %(token)s, %(worker)s, %(host)s, %(pid)s FROM claimed
            ON CONFLICT (job_id) DO UPDATE SET
                payload = EXCLUDED.payload, claimed = EXCLUDED.claimed, token = EXCLUDED.token,
                worker = EXCLUDED.worker, worker_host = EXCLUDED.worker_host, worker_pid = EXCLUDED.worker_pid
        )
        SELECT {columns} FROM claimed
    """
    # Why the claim found nothing: no row, or a row already claimed (by this very attempt, if its reply was lost).
    sql['status'] = f"""
        SELECT j.status, d.token FROM {job_table} j LEFT JOIN {dispatch_table} d ON d.job_id = j.id
        WHERE j.job_id = %s
    """
    sql['reread'] = f'SELECT {columns} FROM {job_table} WHERE job_id = %s'
    # Only this attempt's lease: a lease closed by the liveness check (and perhaps taken again) is not ours any more.
    # And only once the run is recorded as ended: a job NetBox's handle() could not terminate (a result that cannot be
    # saved, the database lost as it saved) keeps its lease, so the liveness check closes it once the work horse is
    # gone; released, it would stay running with nothing left to watch it.
    sql['release'] = (f'DELETE FROM {dispatch_table} d WHERE d.job_id = %s AND d.token = %s AND NOT EXISTS '
                      f'(SELECT 1 FROM {job_table} j WHERE j.id = d.job_id AND j.status = %s) {{commit}} '
                      f'RETURNING d.id')
    # The condition of every save of a running job (``_update_only``): its lease, locked.
    sql['leased'] = (f'EXISTS (SELECT 1 FROM {dispatch_table} WHERE job_id = %s AND token = %s '
                     f'FOR NO KEY UPDATE)')
    sql['still_running'] = (f'SELECT 1 FROM {dispatch_table} d JOIN {job_table} j ON j.id = d.job_id '
                            f'WHERE d.job_id = %s AND d.token = %s AND j.status = %s')
    for name in ('claim', 'release'):
        sql[name + '_async'] = sql[name].replace('{commit}', f'AND {dispatch.ASYNC_COMMIT}')
        sql[name] = sql[name].replace('{commit}', '')
    return sql


def _lease_sql(name, using):
    """
    The claim or the release, committed without waiting for the WAL flush (``dispatch.ASYNC_COMMIT``). A synchronous
    commit costs a disk flush, several milliseconds on common disks: two more per job than stock NetBox made the
    plugin's workers measurably slower. Neither write needs its own flush:

    - the claim is followed within milliseconds by NetBox's ``start()``, a synchronous commit that flushes the WAL
      up to and past the claim; the job runs only after that commit. Should PostgreSQL itself crash in between, the
      claim is lost with ``start()``'s failed save, and the task ends as on any database outage: failed in RQ, the
      job not run;
    - a release lost in a crash leaves a lease on a job that has ended, which the liveness check removes without
      touching the job.

    Inside a caller's transaction (``immediate`` jobs, tests) the plain statement: the setting would lower the
    durability of the caller's whole transaction.
    """
    sql = _statements()
    return sql[name] if connections[using].in_atomic_block else sql[name + '_async']


def _claim_once(job, runner, using, token, next_run):
    from core.models import Job

    sql = _statements()
    worker = workers.current()
    with connections[using].cursor() as cursor:
        cursor.execute(_lease_sql('claim', using), {
            'running': RUNNING,
            'uuid': job.job_id,
            'claimable': list(CLAIMABLE_STATES),
            'queue': compat.rq_queue_name(job)[:100],
            'runner': runner_path(runner)[:255],
            'next_run': next_run,
            'token': token,
            'worker': worker.id if worker else None,
            'host': workers.HOST,
            'pid': os.getpid(),
        })
        row = cursor.fetchone()
        if row is not None:
            return ClaimResult.CLAIMED, Job.from_db(using, sql['attnames'], row)
        cursor.execute(sql['status'], [job.job_id])
        found = cursor.fetchone()
        if found is not None and found[1] == token:
            # Our own claim committed, and its reply was lost with the connection: the job is ours to run.
            cursor.execute(sql['reread'], [job.job_id])
            row = cursor.fetchone()
            if row is not None:
                return ClaimResult.CLAIMED, Job.from_db(using, sql['attnames'], row)
            found = None
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


@lru_cache(maxsize=8)
def _schedules(settings):
    """The waits before each look-up retry and each reconnection: computed once per settings, not once per job."""
    lookups = backoff.delays(settings.backoff_schedule, settings.lookup_base_delay, settings.lookup_retries,
                             settings.lookup_max_wait)
    reconnects = backoff.delays(settings.backoff_schedule, settings.lookup_base_delay, settings.database_retries,
                                float('inf'), max_each=RECONNECT_MAX_DELAY)
    return lookups, reconnects


def _pushed_after_commit():
    """True when the RQ task being run was pushed by the plugin after its row committed."""
    from rq import get_current_job

    try:
        task = get_current_job()
    except Exception:
        return False
    return bool(task is not None and (task.meta or {}).get(dispatch.PUSH_MARKER))


def claim(runner, job, token=None, kwargs=None):
    """
    Claim ``job`` for this worker. Returns the Job as it is in the database, now ``running``, or ``None`` when the
    task must not run (the row was deleted or never appeared, or another task already claimed it).
    """
    from core.models import Job

    using = router.db_for_write(Job)
    lookups, reconnects = _schedules(get_settings())
    token = token or uuid.uuid4()
    # What a periodic job keeps through its run: the arguments of its next run, should its worker die.
    next_run = seal_next_run(kwargs or {}) if job.interval else None
    common = {'job': job, 'runner': runner}
    retries = failures = 0
    waited = 0.0
    committed = None
    while True:
        try:
            result, value = _claim_once(job, runner, using, token, next_run)
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
                events.link_to_job(value, using=using)
            return value

        if result == ClaimResult.TAKEN:
            events.record(RetryEventKindChoices.KIND_DUPLICATE_SKIPPED, using=using,
                          detail=f'Job is already {value}: another copy of this task claimed it. Not run again.',
                          **common)
            return None

        # The row is not there.
        if committed is None:
            committed = _pushed_after_commit()
        if committed:
            # Pushed by the plugin after its row committed: the row was deleted since. Nothing will bring it back.
            events.record(RetryEventKindChoices.KIND_GAVE_UP, attempt=0, delay=0.0, using=using,
                          detail='Job row deleted before a worker took the task (the task was pushed after the row '
                                 'committed). Task dropped without running; the row was not re-created.',
                          **common)
            return None
        # Pushed by stock code: not committed yet, rolled back, or deleted.
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


def release(job, token=None):
    """
    Remove the job's lease once ``handle()`` has returned and the job's row is no longer running. Whether it was
    removed: a lease kept (the row still running, or the database failing) is left to the liveness check.
    """
    from core.models import Job

    using = job._state.db or router.db_for_write(Job)
    try:
        with connections[using].cursor() as cursor:
            cursor.execute(_lease_sql('release', using), [job.pk, token, RUNNING])
            if cursor.fetchone() is not None:
                return True
            cursor.execute(_statements()['still_running'], [job.pk, token, RUNNING])
            if cursor.fetchone() is not None:
                logger.warning('job %s: still running after its run ended (NetBox could not record the end); its '
                               'lease is kept, and the worker closes the job once its work horse is gone', job.job_id)
            return False
    except _DATABASE_ERRORS as e:
        _close(using)
        logger.warning('job %s: lease not removed (%s); the liveness check will clean it up', job.job_id, e)
        return False


def _saving_through_blips(job, runner, save):
    """
    ``save()``, reconnecting and trying again on the ``database_retries`` schedule when the database fails (a blip,
    a restart, a failover): NetBox's ``start()`` failing on a claimed job would leave it neither run nor closed.
    Saving the same full row again is harmless if the first save had committed. Inside a transaction nothing is
    retried: the transaction itself is lost with its connection.
    """
    using = job._state.db
    failures = 0
    while True:
        try:
            return save()
        except _DATABASE_ERRORS as e:
            _, reconnects = _schedules(get_settings())
            if connections[using].in_atomic_block or failures >= len(reconnects):
                raise
            _close(using)
            delay = reconnects[failures]
            failures += 1
            events.record(RetryEventKindChoices.KIND_DATABASE_ERROR, job=job, runner=runner, attempt=failures,
                          delay=delay, using=using,
                          detail=f'{events.describe(e)} while saving the running job. Reconnecting and trying again.')
            time.sleep(delay)


def _update_only(job, held, token=None, runner=None):
    """
    Make every save of ``job`` an UPDATE: ``Model.save()`` falls back to INSERT when the UPDATE touches no row,
    which re-creates a row deleted while the job ran (NetBox's ``start()`` and ``terminate()`` both save).

    With this attempt's lease ``token``, the UPDATE also requires the lease: a job the liveness check closed while
    this run went on (its worker was judged dead, as across a partition) keeps the outcome the check gave it. The
    condition is part of the UPDATE itself, so it costs no statement, and it *locks* the lease row
    (``FOR NO KEY UPDATE`` in the sub-select): a save and the check's close (``liveness._take_lease``, which deletes
    the lease and terminates the job in one transaction) are decided under that one lock. A save that meets the close
    under way waits for it, then finds the lease gone and is refused; a plain ``EXISTS`` would have read the lease
    from before the close and written ``completed`` over ``errored`` (a second ``job_end``, a second notification).
    """
    model_save = type(job).save
    if token is not None:
        from django.db.models import BooleanField, ExpressionWrapper
        from django.db.models.expressions import RawSQL

        leased = ExpressionWrapper(RawSQL(_statements()['leased'], [job.pk, token]), output_field=BooleanField())
        model_do_update = job._do_update

        def _do_update(base_qs, *args, **kwargs):
            return model_do_update(base_qs.filter(leased), *args, **kwargs)

        job._do_update = _do_update

    def save(*args, **kwargs):
        if not kwargs.get('force_insert'):
            kwargs['force_update'] = True
        try:
            return _saving_through_blips(job, runner, lambda: model_save(job, *args, **kwargs))
        except DatabaseError as e:
            if not compat.is_not_updated(e):
                raise
        if token is not None and type(job)._base_manager.using(job._state.db).filter(pk=job.pk).exists():
            held.lease_lost = True
            raise JobLeaseLost(f"job {job.job_id}: closed by the liveness check while it ran; this run's result is "
                               f'not saved over it') from None
        held.row_deleted = True
        raise JobRowDeleted(f'job {job.job_id}: its row was deleted while it ran; not re-created') from None

    job.save = save


def _run_held(original, runner, job, args, kwargs, token=None):
    """
    NetBox's own ``handle()`` on ``job``, saved UPDATE-only (and, with ``token``, only while this attempt holds the
    lease); ``None`` and one event if the row goes.
    """
    using = job._state.db
    with dispatch.successors_held(job, runner) as held:
        _update_only(job, held, token, runner)
        try:
            return original(runner, job, *args, **kwargs)
        except JobNotSaved:
            pass
        if held.lease_lost and not held.row_deleted:
            logger.warning('job %s: closed by the liveness check while its work horse ran on; the run ended here, its '
                           'result was not saved over the close%s', job.job_id,
                           ', and no second next run was scheduled' if job.interval else '')
            return None
        if not held.row_deleted:
            return None
        detail = 'Job row deleted while the job ran: the run ended, the row was not re-created'
        if job.interval:
            detail += ', and the next run of this periodic job was not scheduled'
        events.record(RetryEventKindChoices.KIND_ROW_DELETED, job=job, runner=runner, using=using,
                      detail=detail + '.')
    return None


def run(original, runner, job, args, kwargs):
    """Claim, run NetBox's own ``handle()`` on the fresh row (its lease heartbeating in a worker), release."""
    token = uuid.uuid4()
    fresh = claim(runner, job, token=token, kwargs=kwargs)
    if fresh is None:
        return None
    heartbeat = None
    if workers.current() is not None:
        heartbeat = workers.LeaseHeartbeat(fresh.pk, token, get_settings().heartbeat_interval, fresh._state.db)
        heartbeat.start()
    try:
        return _run_held(original, runner, fresh, args, kwargs, token=token)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        release(fresh, token)
        # The caller's instance ends as NetBox's handle() leaves it: an immediate run (``netbox runscript``, a plugin
        # that reads ``job.status`` after ``enqueue(immediate=True)``) sees the finished job, not the one it passed.
        _copy_state(fresh, job)


def _copy_state(source, target):
    if source is target:
        return
    for field in type(source)._meta.concrete_fields:
        setattr(target, field.attname, getattr(source, field.attname))
    target._state.db = source._state.db
    target._state.adding = False


class WorkerLost(Exception):
    """Why a job that was running is closed without having run to its end (its worker or work horse died)."""


def run_nothing(original, runner, job, reason, kwargs):
    """
    Close a claimed job whose run was cut short, through NetBox's own ``handle()``: its ``start()`` raises
    ``WorkerLost(reason)``, so NetBox records the error, terminates the job as errored (notifications, ``job_end``,
    event rules) and, for a periodic job, schedules the next run with its arguments (under NetBox's own advisory lock
    where it takes one, #22232). The row is saved UPDATE-only: a row deleted meanwhile is not re-created.
    """
    def start():
        raise WorkerLost(reason)

    job.start = start
    return _run_held(original, runner, job, (), kwargs)


def warm(using='default'):
    """
    Fill, in a worker before it forks, what every work horse would otherwise build again for its one job: the claim
    and release statements, the retry schedules, and Django's metadata of the lease (its condition compiled once).
    Work horses inherit it; none of it is a database session. Call from a thread whose session is closed afterwards
    (``sessions.run_in_own_session``): compiling may read the server's version.
    """
    from core.models import Job
    from django.db.models import BooleanField, ExpressionWrapper
    from django.db.models.expressions import RawSQL

    _statements()
    _schedules(get_settings())
    leased = ExpressionWrapper(RawSQL(_statements()['leased'], [0, uuid.uuid4()]), output_field=BooleanField())
    Job.objects.filter(leased).query.get_compiler(using=using).as_sql()


def wrap_handle(original):
    """The wrapper installed as ``JobRunner.handle``; ``original`` is NetBox's function (unbound)."""

    @wraps(original)
    def handle(cls, job, *args, **kwargs):
        return run(original, cls, job, args, kwargs)

    handle.__safejobs_original__ = original
    return handle

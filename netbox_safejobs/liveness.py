"""
Liveness from the database: closing the jobs whose worker or work horse died.

A claimed job's lease names its worker (``WorkerHeartbeat``) and its work horse. Whether the job still runs is decided
from PostgreSQL alone, as Oban's Lifeline and Procrastinate's stalled-job detection do, never from what Redis holds:

- **the work horse died** (SIGKILL, OOM, a stop from Background Tasks) while its worker lives: RQ's worker sees it at
  once, and the worker loop closes the lease that horse held (``close_horse``);
- **the whole worker died**: its heartbeat, refreshed every ``heartbeat_interval`` seconds by its own loop, is older
  than ``stuck_after`` seconds by the database's clock, and so is the lease's own heartbeat, which the work horse
  refreshes while a job runs longer than ``heartbeat_interval`` (a worker killed alone leaves its work horse
  running). ``close_stale``. Clocks of worker hosts play no part.

Staleness across a database outage is not death: no heartbeat counts as stale from before the database server's
own start (``pg_postmaster_start_time()``: a restart), and the worker loop judges only once it has itself worked
for ``stuck_after`` seconds (``worker_loop.WorkerLoop.may_judge``: an outage of the network, a failover). A job
closed here whose work horse runs on after all cannot be reopened by it: the horse saves the job only while its
lease exists (``guard._update_only``).

A webhook's lease (a task without a Job) is not closed but owed again: the relay sends it once more.

A job whose worker keeps heartbeating is never closed, however long it runs and whatever happens to Redis. A lease
without a worker (``immediate`` jobs, run by ``netbox runscript`` in its own process) is never closed.

Closing is atomic: the lease is deleted with ``RETURNING`` in the same transaction that terminates the job, so two
passes never close or reschedule one job twice, and a pass that dies leaves the lease for the next. The job is
terminated, and a periodic one rescheduled with its arguments, by NetBox's own ``handle()`` (``guard.run_nothing``).
"""

import inspect
import logging
import time
from dataclasses import dataclass, field

from django.db import connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from . import compat, events, guard, stopping
from .choices import RUNNING, RetryEventKindChoices
from .payload import BadPayload, NextRun, unseal
from .settings import get_settings

__all__ = (
    'LivenessReport',
    'close_dead_horses',
    'close_horse',
    'close_stale',
    'close_with_netbox',
    'observation_window',
    'pid_alive',
    'stale_leases',
)

logger = logging.getLogger('netbox_safejobs.liveness')

BATCH = 100

_COLUMNS = ('id', 'job_id', 'job_uuid', 'runner', 'queue_name', 'payload', 'worker_host', 'worker_pid',
            'stop_requested', 'stopped_by', 'stop_next_run')


@dataclass
class LivenessReport:
    closed: list = field(default_factory=list)
    forgotten_workers: int = 0
    errors: list = field(default_factory=list)


def _tables():
    from .models import JobDispatch, WorkerHeartbeat

    return JobDispatch._meta.db_table, WorkerHeartbeat._meta.db_table


def _original_handle():
    """NetBox's own ``JobRunner.handle`` function, whether or not the guard wraps it."""
    from netbox.jobs import JobRunner

    func = inspect.getattr_static(JobRunner, 'handle').__func__
    return getattr(func, '__safejobs_original__', func)


def close_with_netbox(job, runner, error, kwargs=None):
    """
    Close a running ``job`` that holds no lease (one NetBox left running without the plugin, ``adoption.py``) as
    NetBox's own ``handle()`` closes a failed run (``guard.run_nothing``): errored with ``error``, with its
    notifications, ``job_end`` and event rules, and a periodic job's next run scheduled with ``kwargs``. A periodic job
    whose runner or arguments are not known (``None``) is only terminated as errored: a next run with made-up arguments
    would run something else. Inside the caller's transaction, the row locked by it. Returns whether NetBox was asked
    to schedule a next run.
    """
    from netbox.jobs import JobRunner

    if job.started is None:
        # Never started by NetBox: its handle() computes the next run from the start time.
        job.started = timezone.now()
    if job.interval and (runner is None or kwargs is None):
        job.terminate(status='errored', error=error)
        return False
    guard.run_nothing(_original_handle(), runner or JobRunner, job, error, kwargs or {})
    return bool(job.interval)


def _release_task(using, lease_id, reason, kind):
    """
    The lease of a task without a Job (an event rule's webhook, ``webhooks.py``) whose work horse died: owed again, so
    the relay sends it once more (delivered at least once), or, stopped by an operator, kept as given up. Returns
    ``(handled, task UUID or None)``: not handled when the lease is a job's, or gone.
    """
    table, _ = _tables()
    if kind == RetryEventKindChoices.KIND_OPERATOR_STOPPED:
        sets = 'gave_up = clock_timestamp(), token = NULL, worker = NULL, worker_pid = NULL'
        then = 'Kept as given up: send it again from its page under Jobs in flight if it should be delivered.'
    else:
        sets = ("claimed = NULL, token = NULL, worker = NULL, worker_host = '', worker_pid = NULL, heartbeat = NULL, "
                'sent = NULL, owed = clock_timestamp()')
        then = 'It is owed again: the relay sends it, and the receiver may get it twice.'
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        # One statement, and none more for a job's lease: nothing updated is a job's lease, or one another pass took
        # (the job's close finds it gone too).
        cursor.execute(f'UPDATE {table} SET {sets} WHERE id = %s AND claimed IS NOT NULL AND job_id IS NULL '
                       f'RETURNING job_uuid, name, runner, queue_name, worker_host', [lease_id])
        row = cursor.fetchone()
        if row is None:
            return False, None
        task_uuid, name, runner, queue_name, host = row
        events.record(RetryEventKindChoices.KIND_WEBHOOK_FAILED if kind != RetryEventKindChoices.KIND_OPERATOR_STOPPED
                      else kind, job_uuid=task_uuid, job_name=name, runner=runner, queue=queue_name,
                      detail=f'{reason} (worker {host or "?"}) while it was being sent. {then}', using=using)
    return True, task_uuid


def _close(using, lease_id, reason, kind):
    """Delete one lease and close its job, in one transaction. Returns the job UUID, or None if another pass did."""
    handled, task_uuid = _release_task(using, lease_id, reason, kind)
    if handled:
        return task_uuid
    try:
        return _close_through_netbox(using, lease_id, reason, kind)
    except Exception as e:
        # NetBox's handle() could not close it (a runner that cannot be imported any more, a failing notification):
        # close it plainly rather than retrying the same lease on every pass.
        logger.exception('lease %s: closing through NetBox failed; marking the job errored directly', lease_id)
        return _close_plainly(using, lease_id, f'{reason}. Closing it through NetBox failed: {events.describe(e)}',
                              kind)


def _take_lease(using, lease_id):
    """Delete one lease, inside the caller's transaction; its columns, or None when another pass took it first."""
    table, _ = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(f'DELETE FROM {table} WHERE id = %s AND claimed IS NOT NULL RETURNING {", ".join(_COLUMNS)}',
                       [lease_id])
        row = cursor.fetchone()
    return dict(zip(_COLUMNS, row, strict=True)) if row is not None else None


def _stopped_by_operator(lease, reason, kind):
    """
    The reason and kind of a close, given the lease: a lease an operator asked to stop (``stopping.py``) is closed as
    stopped by that operator, whatever ended its work horse (RQ's stop, the worker's own check, or its worker's death).
    """
    if lease['stop_requested'] is None:
        return reason, kind
    who = lease['stopped_by'] or 'an operator'
    when = lease['stop_requested'].strftime('%Y-%m-%d %H:%M:%S %Z').strip()
    return f'Stopped by {who} at {when}', RetryEventKindChoices.KIND_OPERATOR_STOPPED


def _close_plainly(using, lease_id, reason, kind):
    from core.models import Job

    with transaction.atomic(using=using):
        lease = _take_lease(using, lease_id)
        if lease is None:
            return None
        reason, kind = _stopped_by_operator(lease, reason, kind)
        error = f'{reason}. Closed by netbox-safejobs.'
        # What NetBox's terminate() records besides: its run time too, where Job has it (4.7).
        Job.objects.using(using).filter(pk=lease['job_id'], status=RUNNING).update(
            status='errored', error=error, **compat.job_closed_values(timezone.now()),
        )
        events.record(kind, job_uuid=lease['job_uuid'], runner=lease['runner'], queue=lease['queue_name'],
                      detail=error + ' No next run scheduled.', using=using)
    return lease['job_uuid']


def _close_through_netbox(using, lease_id, reason, kind):
    from core.models import Job

    with transaction.atomic(using=using):
        lease = _take_lease(using, lease_id)
        if lease is None:
            return None
        job = Job.objects.using(using).filter(pk=lease['job_id']).first()
        if job is None or job.status != RUNNING:
            return None
        if job.started is None:
            # The work horse died between the claim and NetBox's start(): NetBox's handle() computes the next run
            # from the start time.
            job.started = timezone.now()
        reason, kind = _stopped_by_operator(lease, reason, kind)
        where = f'worker {lease["worker_host"] or "?"}, work horse pid {lease["worker_pid"] or "?"}'
        error = f'{reason} ({where}). Closed by netbox-safejobs.'
        kwargs = {}
        if lease['payload'] is not None:
            try:
                stored = unseal(lease['payload'])
                kwargs = dict(stored) if isinstance(stored, NextRun) else {}
            except BadPayload as e:
                error += f' Its next run cannot be scheduled: {e}.'
        try:
            runner = import_string(lease['runner'])
        except ImportError:
            runner = None
        detail = error
        if runner is None:
            job.terminate(status='errored', error=error)
            detail += f' Runner {lease["runner"]!r} not found: no next run scheduled.'
        elif job.interval and not lease['stop_next_run']:
            # The operator declined the next run: NetBox's handle() closes the job as for any other stop, without the
            # interval it would schedule the next run from; the run keeps its interval on record.
            interval, job.interval = job.interval, None
            guard.run_nothing(_original_handle(), runner, job, error, kwargs)
            Job.objects.using(using).filter(pk=job.pk).update(interval=interval)
            job.interval = interval
            detail += ' No next run was scheduled, as the operator chose.'
        else:
            guard.run_nothing(_original_handle(), runner, job, error, kwargs)
            if job.interval:
                detail += ' The next run of this periodic job is scheduled by NetBox.'
        events.record(kind, job=job, runner=lease['runner'], queue=lease['queue_name'], detail=detail, using=using)
    return lease['job_uuid']


def close_horse(identity, horse_pid, reason, kind=RetryEventKindChoices.KIND_STUCK_ERRORED, using='default'):
    """Close the job(s) a work horse of this worker held when it died. Returns their UUIDs."""
    if identity is None or not horse_pid:
        return []
    table, _ = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT id FROM {table} WHERE worker = %s AND worker_pid = %s AND claimed IS NOT NULL',
                       [identity.id, horse_pid])
        ids = [row[0] for row in cursor.fetchall()]
    closed = []
    for lease_id in ids:
        job_uuid = _close(using, lease_id, reason, kind)
        if job_uuid is not None:
            closed.append(job_uuid)
    return closed


def pid_alive(pid):
    """Whether a process of this host runs (a zombie, killed but not yet reaped by RQ, does not)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_dead_horses(identity, using='default', monitored=()):
    """
    Close the leases of this worker whose work horse no longer runs: the backstop of RQ's own notice
    (``worker_loop.horse_ended``), for a notice that failed or an RQ that gives none. Work horses in ``monitored``
    are being handled by that notice right now, with its more precise reason. One indexed query.
    """
    if identity is None:
        return []
    table, _ = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT id, worker_pid FROM {table} WHERE worker = %s AND claimed IS NOT NULL',
                       [identity.id])
        dead = [lease_id for lease_id, pid in cursor.fetchall()
                if pid and pid not in monitored and not pid_alive(pid)]
    closed = []
    for lease_id in dead:
        job_uuid = _close(using, lease_id, 'The work horse running this job died (killed by a signal or out of '
                                           'memory), or ended without NetBox recording the end of the run',
                          RetryEventKindChoices.KIND_STUCK_ERRORED)
        if job_uuid is not None:
            closed.append(job_uuid)
    return closed


def stale_leases(using='default', limit=BATCH, stuck_after=None):
    """
    Ids of leases whose worker and work horse have both not heartbeated for ``stuck_after`` seconds (database clock).
    A work horse whose worker was killed alone runs on, and keeps its lease alive itself.
    """
    stuck_after = stuck_after if stuck_after is not None else get_settings().stuck_after
    table, workers_table = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'SELECT d.id FROM {table} d LEFT JOIN {workers_table} w ON w.id = d.worker '
            f'WHERE d.claimed IS NOT NULL AND d.worker IS NOT NULL '
            f'AND greatest(d.claimed, d.heartbeat, pg_postmaster_start_time()) '
            f"< clock_timestamp() - %s * interval '1 second' "
            f"AND (w.id IS NULL OR w.seen < clock_timestamp() - %s * interval '1 second') "
            f'ORDER BY d.claimed LIMIT %s',
            [stuck_after, stuck_after, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def observation_window(settings=None):
    """
    Seconds a judge that has not watched the workers (``netbox safejobs_recover``, run from cron or after an incident)
    watches a stale lease before closing it: two heartbeats of a live worker, each written up to one loop tick late.
    """
    settings = settings or get_settings()
    return 2 * (settings.heartbeat_interval + settings.relay_interval)


def _holders(using, lease_ids):
    """``{lease id: (queue name, RQ worker name)}``: where to send a stop for each lease, read before it is closed."""
    table, workers_table = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT d.id, d.queue_name, w.name FROM {table} d JOIN {workers_table} w ON w.id = d.worker '
                       f'WHERE d.id = ANY(%s)', [list(lease_ids)])
        return {lease_id: (queue_name, name) for lease_id, queue_name, name in cursor.fetchall()}


def close_stale(report=None, using='default', dry_run=False, observe=0.0):
    """
    Close every job whose worker stopped heartbeating; forget workers that are gone. Returns the report.

    With ``observe`` (seconds), a lease is closed only if it is still stale that long after it was first seen stale:
    staleness across a database outage (or a failover, whose promoted standby started before the outage) is not
    death, and a judge that was not itself watching through it waits for the live workers to heartbeat again. The
    worker loop judges only after working ``stuck_after`` itself (``worker_loop.WorkerLoop.may_judge``) instead.
    """
    report = report or LivenessReport()
    stuck_after = get_settings().stuck_after
    try:
        ids = stale_leases(using, limit=10 ** 6 if dry_run else BATCH, stuck_after=stuck_after)
        if ids and observe:
            time.sleep(observe)
            seen = set(ids)
            ids = [lease_id for lease_id in stale_leases(using, limit=10 ** 6 if dry_run else BATCH,
                                                         stuck_after=stuck_after) if lease_id in seen]
        if dry_run:
            report.closed += ids
            return report
        while ids:
            holders = _holders(using, ids)
            for lease_id in ids:
                job_uuid = _close(using, lease_id,
                                  f'The worker running this job stopped heartbeating for more than {stuck_after}s '
                                  f'(killed, out of memory, or its host was lost)',
                                  RetryEventKindChoices.KIND_STUCK_ERRORED)
                if job_uuid is not None:
                    report.closed.append(job_uuid)
                    # Judged dead, perhaps only cut off (a partition, a frozen host): its work horse, if it runs on,
                    # is stopped as RQ stops one, rather than run beside the next run. Its saves are refused anyway.
                    queue_name, worker_name = holders.get(lease_id, (None, None))
                    stopping.send_stop_command(queue_name, worker_name, job_uuid)
            if len(ids) < BATCH:
                break
            ids = stale_leases(using, stuck_after=stuck_after)
        _, workers_table = _tables()
        table, _ = _tables()
        with connections[using].cursor() as cursor:
            cursor.execute(
                f'DELETE FROM {workers_table} w '
                f"WHERE w.seen < clock_timestamp() - %s * interval '1 second' "
                f'AND NOT EXISTS (SELECT 1 FROM {table} d WHERE d.worker = w.id AND d.claimed IS NOT NULL)',
                [stuck_after],
            )
            report.forgotten_workers += cursor.rowcount
    except Exception as e:
        # Reported, not logged here: the worker loop says it once while it lasts, the command prints it.
        report.errors.append(events.redact(events.describe(e)))
    return report

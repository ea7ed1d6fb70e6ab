"""
The recovery pass: what the plugin owes RQ, and what RQ lost.

Run by the ``SafeJobsRecovery`` system job every ``recovery_interval`` minutes and by ``netbox safejobs_recover``
(for cron, or by hand with ``--dry-run``). It reads only the plugin's own ``JobDispatch`` table (joined to the Job
rows it names, by primary key), never scans ``core_job``: its cost follows the number of jobs in flight, not the
size of the job history.

1. **Owed pushes.** A stored push older than ``recovery_min_age`` whose job still waits (pending/scheduled) and
   whose task Redis does not know (``rq:job:<id>`` absent) is sent again: the push failed (Redis was down), the
   process died between commit and push, or Redis lost the task (restarted without persistence, flushed, failed
   over). So is one whose task failed or was stopped in RQ before the job started (the worker guard gives a task up
   to RQ when the database stays away), at most ``MAX_DEAD_TASK_RECOVERIES`` times. A task Redis still holds is
   left alone, so a pass run twice pushes nothing the second time; a duplicate that still slips through a race is
   skipped by the worker guard's claim.
2. **Stuck jobs.** A claimed job still ``running`` after ``stuck_job_grace`` whose RQ task is gone (no task, task
   failed or stopped, or its worker no longer registered) had its worker killed (SIGKILL, OOM). It is marked
   errored through NetBox's own ``Job.terminate()`` (notifications, ``job_end`` signal), and a periodic job is
   scheduled again.
3. **Leftovers.** Dispatch rows of jobs that already finished, or were started without the guard, are removed.
"""

import logging
import pickle
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import router, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from . import compat, events
from .choices import RetryEventKindChoices
from .dispatch import CapturedPush
from .settings import get_settings

__all__ = (
    'RecoveryReport',
    'run_pass',
)

logger = logging.getLogger('netbox_safejobs.recovery')

BATCH = 500


@dataclass
class RecoveryReport:
    pushed: list = field(default_factory=list)
    already_queued: int = 0
    stuck_errored: list = field(default_factory=list)
    still_running: int = 0
    cleaned: int = 0
    errors: list = field(default_factory=list)
    dry_run: bool = False

    def summary(self):
        verb = 'would push' if self.dry_run else 'pushed'
        text = (
            f'{verb} {len(self.pushed)} owed job(s), {self.already_queued} already queued in RQ; '
            f'{"would error" if self.dry_run else "errored"} {len(self.stuck_errored)} stuck job(s), '
            f'{self.still_running} still running; removed {self.cleaned} finished dispatch row(s)'
        )
        if self.errors:
            text += f'; {len(self.errors)} error(s): ' + '; '.join(self.errors[:5])
        return text


def _rq_key(job_uuid):
    from rq.job import Job as RQJob

    return RQJob.key_for(str(job_uuid))


def _queued_in_rq(rows):
    """
    {job_uuid: status} of each row's RQ task (``None`` when Redis does not hold it), one pipelined HGET per task,
    per queue's Redis connection.
    """
    by_queue = {}
    for row in rows:
        by_queue.setdefault(row['queue_name'], []).append(row)
    result = {}
    for queue_name, queue_rows in by_queue.items():
        connection = compat.get_push_queue(queue_name).connection
        pipe = connection.pipeline(transaction=False)
        for row in queue_rows:
            pipe.hget(_rq_key(row['job_uuid']), 'status')
        for row, status in zip(queue_rows, pipe.execute(), strict=True):
            result[row['job_uuid']] = status.decode() if isinstance(status, bytes) else status
    return result


# RQ states in which a task of a job that never started will not run any more: the task failed before the job
# started (the worker guard raised after a database outage), or was stopped or cancelled in RQ.
_DEAD_TASK_STATES = ('failed', 'stopped', 'canceled')

# How many times the pass re-sends one job whose task keeps dying before the job starts. A task Redis lost is
# always sent again; one that fails over and over (it cannot be unpickled by the worker, say) is not re-sent forever.
MAX_DEAD_TASK_RECOVERIES = 5


def _recover_owed(report, settings, now, using, dry_run):
    from .models import JobDispatch

    cutoff = now - timedelta(seconds=settings.recovery_min_age)
    owed = JobDispatch.objects.using(using).filter(claimed__isnull=True).filter(
        Q(pushed__isnull=True, created__lt=cutoff) | Q(pushed__lt=cutoff)
    )
    last_pk = 0
    while True:
        rows = list(
            owed.filter(pk__gt=last_pk).order_by('pk').values(
                'pk', 'job_id', 'job_uuid', 'queue_name', 'runner', 'method', 'payload', 'recoveries',
                'job__status', 'job__name',
            )[:BATCH]
        )
        if not rows:
            return
        last_pk = rows[-1]['pk']
        waiting = [r for r in rows if r['job__status'] in compat.CLAIMABLE_STATES and r['payload'] is not None]
        finished = [r['pk'] for r in rows if r['job__status'] not in compat.CLAIMABLE_STATES]
        if finished and not dry_run:
            report.cleaned += JobDispatch.objects.using(using).filter(pk__in=finished).delete()[0]
        try:
            queued = _queued_in_rq(waiting)
        except Exception as e:
            report.errors.append(f'Redis: {events.redact(events.describe(e))}')
            return
        to_push = []
        for row in waiting:
            status = queued[row['job_uuid']]
            if status is not None and (
                status not in _DEAD_TASK_STATES or row['recoveries'] >= MAX_DEAD_TASK_RECOVERIES
            ):
                report.already_queued += 1
                continue
            row['reason'] = ('Task not in Redis (the push failed, the process died before pushing, or Redis lost '
                             'the task)' if status is None else f'RQ task {status} before the job started')
            to_push.append(row)
        if dry_run:
            report.pushed += [row['job_uuid'] for row in to_push]
            continue
        # Mark first, in one statement, and only the rows no worker claimed meanwhile: a claimed job needs no push.
        marked = _mark_pushed(using, [row['pk'] for row in to_push])
        recovered = []
        redis_gone = False
        for row in to_push:
            if row['pk'] not in marked:
                continue
            try:
                method, args, kwargs = pickle.loads(bytes(row['payload']))
                CapturedPush(row['queue_name'], method, args, kwargs).send()
            except Exception as e:
                report.errors.append(f'job {row["job_uuid"]}: {events.redact(events.describe(e))}')
                if _is_connection_error(e):
                    # Redis is still away: the rest of the batch would fail the same way.
                    redis_gone = True
                    break
                continue
            report.pushed.append(row['job_uuid'])
            recovered.append({
                'job_pk': row['job_id'], 'job_uuid': row['job_uuid'], 'job_name': row['job__name'],
                'runner': row['runner'], 'queue': row['queue_name'], 'attempt': row['recoveries'] + 1,
                'detail': f'{row["reason"]}; pushed again from the stored dispatch.',
            })
        events.record_many(RetryEventKindChoices.KIND_RECOVERED, recovered, using=using)
        if redis_gone:
            return


def _mark_pushed(using, pks):
    """Stamp the rows as pushed now (and count the recovery); returns the pks of the rows still unclaimed."""
    from django.db import connections

    from .models import JobDispatch

    if not pks:
        return set()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'UPDATE {JobDispatch._meta.db_table} SET pushed = clock_timestamp(), recoveries = recoveries + 1 '
            f'WHERE id = ANY(%s) AND claimed IS NULL RETURNING id',
            [list(pks)],
        )
        return {row[0] for row in cursor.fetchall()}


def _is_connection_error(e):
    from redis.exceptions import ConnectionError, TimeoutError

    return isinstance(e, (ConnectionError, TimeoutError))


def _rq_task_gone(job_uuid, queue_name):
    """Why the RQ task of a running job is gone (its worker died), or ``None`` while it may still be running."""
    from rq.job import JobStatus
    from rq.worker import Worker

    queue = compat.get_push_queue(queue_name)
    rq_job = queue.fetch_job(str(job_uuid))
    if rq_job is None:
        return 'its RQ task no longer exists'
    status = rq_job.get_status(refresh=False)
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED):
        return f'its RQ task is {status.value}'
    if status == JobStatus.STARTED:
        name = getattr(rq_job, 'worker_name', None)
        if name:
            worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=queue.connection)
            if worker is None:
                return f'its worker {name} is no longer registered'
            if worker.get_current_job_id() != str(job_uuid):
                return f'its worker {name} is running something else'
    return None


def _reschedule(job, runner, payload):
    """Schedule the next run of a periodic job whose run was cut short, as NetBox's handle() would have."""
    kwargs = {}
    if payload is not None:
        _method, _args, captured_kwargs = pickle.loads(bytes(payload))
        kwargs = {k: v for k, v in captured_kwargs.items() if k not in ('job', 'job_id')}
    schedule_at = max(
        (job.scheduled or job.started or timezone.now()) + timedelta(minutes=job.interval),
        timezone.now() + timedelta(minutes=1),
    )
    return runner.enqueue(
        instance=job.object, name=job.name, user=job.user, schedule_at=schedule_at, interval=job.interval,
        **compat.next_run_kwargs(job), **kwargs,
    )


def _close_stuck(report, settings, now, using, dry_run):
    from core.models import Job

    from .models import JobDispatch

    leases = JobDispatch.objects.using(using).filter(
        claimed__lt=now - timedelta(seconds=settings.stuck_job_grace)
    ).order_by('pk')
    for lease in leases.iterator(chunk_size=BATCH):
        job = Job.objects.using(using).filter(pk=lease.job_id).first()
        if job is None or job.status != compat.RUNNING:
            if not dry_run:
                lease.delete()
                report.cleaned += 1
            continue
        try:
            reason = _rq_task_gone(lease.job_uuid, lease.queue_name or compat.job_queue_name(job))
        except Exception as e:
            report.errors.append(f'Redis: {events.redact(events.describe(e))}')
            return
        if reason is None:
            report.still_running += 1
            continue
        report.stuck_errored.append(lease.job_uuid)
        if dry_run:
            continue
        error = (f'The worker running this job stopped without finishing it ({reason}; worker '
                 f'{lease.worker_host or "?"} pid {lease.worker_pid or "?"}). Marked errored by netbox-safejobs.')
        with transaction.atomic(using=using):
            job.terminate(status='errored', error=error)
            JobDispatch.objects.using(using).filter(pk=lease.pk).delete()
        detail = error
        if job.interval:
            try:
                successor = _reschedule(job, import_string(lease.runner), lease.payload)
                detail += f' Next run scheduled as job {successor.job_id}.'
            except Exception as e:
                detail += f' The next run could not be scheduled: {events.describe(e)}.'
        events.record(RetryEventKindChoices.KIND_STUCK_ERRORED, job=job, runner=lease.runner,
                      queue=lease.queue_name, detail=detail, using=using)


def run_pass(dry_run=False, now=None, stuck=True):
    """
    One recovery pass. Returns a ``RecoveryReport``; never raises for a Redis outage (it is reported).
    ``stuck=False`` skips the stuck-job part (used at worker start-up).
    """
    from core.models import Job

    settings = get_settings()
    now = now or timezone.now()
    using = router.db_for_write(Job)
    report = RecoveryReport(dry_run=dry_run)
    _recover_owed(report, settings, now, using, dry_run)
    if stuck and settings.stuck_job_detection:
        _close_stuck(report, settings, now, using, dry_run)
    level = logging.WARNING if (report.pushed or report.stuck_errored or report.errors) else logging.INFO
    logger.log(level, 'recovery pass: %s', report.summary())
    return report

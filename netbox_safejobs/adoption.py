"""
Adoption: the jobs NetBox left waiting or running without the plugin, taken over once.

A job enqueued by NetBox without the plugin (before it was installed, or by a web server or worker not yet restarted
during a rolling upgrade) has no ``JobDispatch`` row: no stored push for the relay to send again, no lease for the
liveness check to close. Left ``running`` by a worker that died it stays so for good (NetBox #22714 for the
housekeeping job); left waiting while Redis lost its task, nothing ever runs it. When a guarded worker starts
(``worker_loop``), and with ``netbox safejobs_recover --adopt``, each such job is decided once, from what Redis holds
(its RQ task, by the job's UUID, and RQ's own registry of live workers):

waiting (``pending``, ``scheduled``)

- its task is runnable (queued, scheduled, deferred, or started by a worker RQ lists as live): the job gets a dispatch
  row, stamped sent, with a push rebuilt from that task and sealed as the plugin seals its own (``payload.seal``).
  From then on the relay sends it again should Redis lose it, and a worker's claim takes the row over as a lease
  (``ON CONFLICT (job_id)``). Nothing is pushed now: the task is there;
- Redis no longer holds it runnable (gone, failed or finished before the job started, or started by a worker that is
  gone): rebuilt and owed, when its runner and arguments can be rebuilt: from the task while Redis still has it,
  else a system job from NetBox's registry of system jobs, a data source's sync from its data source (neither takes
  arguments). The relay sends it within a second; the claim runs it once;
- otherwise (a script run: its data and the request were only in the task; a task cancelled or stopped in RQ by an
  operator; a task that cannot be read): nothing is sent, and the job is listed for the operator with the reason
  (one ``not adopted`` event per job, once; ``netbox safejobs_check`` counts them).

running

- its task is started by an RQ worker that RQ lists as live (a stock worker during a rolling upgrade): left alone,
  and looked at again later (``AdoptionReport.vouched``);
- otherwise (no task, or its worker is gone): closed as NetBox's own ``handle()`` closes a failed run
  (``liveness.close_with_netbox``): errored, with the reason, and a periodic job's next run scheduled with its
  arguments, where they are known (the chain check of ``chains.py`` applies).

Every job taken over gets one ``adopted`` event saying what was done and why. Nothing is decided from missing data:
a Redis that does not answer stops the pass before any job is looked at, and a database error ends it (the worker
loop tries again). Each job is decided in a transaction of its own, with its row locked (``FOR UPDATE SKIP LOCKED``)
and its dispatch row looked for again under the lock: workers starting together adopt each job once, and a worker
claiming the job meanwhile either committed first (the job is no longer without a row) or waits for the adoption. A
job saved less than ``unknown_push_age`` seconds ago is left for a later pass: its push may still be on its way.

A limit: a job run with ``immediate=True`` by a process without the plugin (``netbox runscript`` on a host not yet
upgraded) has no task in RQ either; a guarded worker starting while it runs closes it as if its worker had died.
"""

import logging
from dataclasses import dataclass, field

from django.db import DatabaseError, connections, transaction

from . import chains, compat, events, liveness
from .choices import CLAIMABLE_STATES, RUNNING, RetryEventKindChoices
from .dispatch import ROW_COLUMNS
from .jobs import system_job_runners
from .payload import Push, runner_path, seal
from .queues import redis_groups, rq_worker_names
from .settings import get_settings

__all__ = (
    'AdoptionReport',
    'adopt',
    'adopt_and_merge',
)

logger = logging.getLogger('netbox_safejobs.adoption')

# RQ task statuses from which a waiting job's task still runs by itself (``started`` only while its worker lives).
_RUNNABLE = frozenset({'queued', 'scheduled', 'deferred'})
# Statuses an operator gives a task (Background Tasks): not sent again.
_OPERATOR_ENDED = frozenset({'canceled', 'stopped'})


class RedisAway(Exception):
    """A Redis of the RQ queues does not answer: nothing is decided."""


class TaskUnreadable(Exception):
    """The job's RQ task is there but cannot be turned back into a push."""


@dataclass
class AdoptionReport:
    # UUIDs of waiting jobs whose task is in Redis, now covered by a dispatch row.
    covered: list = field(default_factory=list)
    # UUIDs of waiting jobs whose task Redis lost, rebuilt and owed.
    rebuilt: list = field(default_factory=list)
    # UUIDs of running jobs without a live task or worker, closed.
    closed: list = field(default_factory=list)
    # UUIDs of running jobs whose task a live RQ worker runs: left alone for now.
    vouched: list = field(default_factory=list)
    # UUIDs of running jobs not looked at: ``stuck_job_detection`` is off.
    left_running: list = field(default_factory=list)
    # (UUID, reason) of waiting jobs that cannot be rebuilt: left as they are.
    listed: list = field(default_factory=list)
    # Jobs saved too recently to be judged: looked at in a later pass.
    deferred: int = 0
    errors: list = field(default_factory=list)
    redis_down: bool = False
    dry_run: bool = False
    # The ``chains.ChainReport`` of the merge that followed (``adopt_and_merge``).
    chains: object = None

    @property
    def adopted(self):
        return len(self.covered) + len(self.rebuilt) + len(self.closed)

    @property
    def settled(self):
        """Whether nothing is left to look at again: no error, Redis answered, nothing deferred or vouched for."""
        return not (self.errors or self.redis_down or self.deferred or self.vouched)

    def summary(self):
        if self.redis_down:
            return 'adoption not done: a Redis of the RQ queues does not answer (nothing is decided without it)'
        would = 'would ' if self.dry_run else ''
        text = (f'{would}adopt {self.adopted} job(s) NetBox left without the plugin: {len(self.covered)} waiting '
                f'with their task in Redis covered, {len(self.rebuilt)} whose task Redis lost rebuilt and sent '
                f'again, {len(self.closed)} left running by a worker that is gone closed as errored; '
                f'{len(self.listed)} cannot be rebuilt (listed for the operator); {len(self.vouched)} running '
                f'under a live RQ worker left alone; {self.deferred} too recent, left for later')
        if self.left_running:
            text += f'; {len(self.left_running)} running not looked at (stuck_job_detection is off)'
        if self.chains is not None:
            text += '; ' + self.chains.summary()
        if self.errors:
            text += f'; {len(self.errors)} error(s): ' + '; '.join(self.errors[:5])
        return text


def _tables():
    from core.models import Job

    from .models import JobDispatch

    return Job._meta.db_table, JobDispatch._meta.db_table


def _candidates(using, age):
    """(primary key, old enough to judge) of every job waiting or running without a dispatch row, oldest first."""
    job_table, table = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT j.id, j.created < clock_timestamp() - %s * interval '1 second' FROM {job_table} j "
            f'WHERE j.status = ANY(%s) AND NOT EXISTS (SELECT 1 FROM {table} d WHERE d.job_id = j.id) ORDER BY j.id',
            [age, [*CLAIMABLE_STATES, RUNNING]],
        )
        return cursor.fetchall()


def _redis_view():
    """``({queue name: Redis connection}, {names of the RQ workers RQ lists as live})``; ``RedisAway`` if one is."""
    from redis.exceptions import RedisError

    queues, alive = {}, set()
    try:
        for connection, names in redis_groups().values():
            connection.ping()
            alive |= rq_worker_names(connection)
            queues.update(dict.fromkeys(names, connection))
    except (RedisError, OSError) as e:
        raise RedisAway(events.describe(e)) from e
    return queues, alive


def _read_task(job, queues):
    """The job's RQ task, or ``None`` when Redis holds none. Raises ``TaskUnreadable`` for an unknown queue."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job as RQJob

    queue = compat.rq_queue_name(job)
    connection = queues.get(queue)
    if connection is None:
        raise TaskUnreadable(f'its queue {queue!r} is not in RQ_QUEUES')
    try:
        return RQJob.fetch(str(job.job_id), connection=connection)
    except NoSuchJobError:
        return None


def _task_status(task):
    status = task.get_status(refresh=False)
    return getattr(status, 'value', status)


def _runner_of_task(task):
    """``(runner, arguments)`` the task runs ``handle()`` of, unpickled from Redis; ``TaskUnreadable`` if it cannot."""
    from netbox.jobs import JobRunner

    try:
        func = task.func
        kwargs = dict(task.kwargs or {})
    except Exception as e:
        raise TaskUnreadable(f'its task in Redis cannot be read ({events.describe(e)})') from e
    runner = getattr(func, '__self__', None)
    if not (isinstance(runner, type) and issubclass(runner, JobRunner) and task.func_name == 'handle'):
        raise TaskUnreadable(f'its task in Redis does not run a NetBox job ({task.func_name})')
    return runner, chains.run_arguments(kwargs)


def _rebuilt_runner(job):
    """
    ``(runner, arguments, from what)`` of a job whose task is gone, where NetBox itself can say them; else
    ``(None, None, why not)``.
    """
    if job.object_type_id is None and job.object_id is None:
        runner = system_job_runners().get(job.name)
        if runner is not None:
            return runner, {}, "NetBox's registry of system jobs"
        return None, None, ('its runner and arguments were only in the task Redis lost (a job without an object that '
                            'is not a registered system job)')
    model = job.object_type.model if job.object_type_id else ''
    if model == 'datasource':
        from core.jobs import SyncDataSourceJob

        if job.name == SyncDataSourceJob.name:
            if job.object is None:
                return None, None, 'its data source no longer exists'
            return SyncDataSourceJob, {}, f'its data source ({job.object})'
    if model == 'scriptmodule':
        return None, None, ('a script run: its data and the request that started it were only in the task Redis '
                            'lost')
    return None, None, f'its runner and arguments were only in the task Redis lost (a job of a {model or "?"})'


def _push(job, runner, arguments, timeout=None):
    """The push NetBox's ``Job.enqueue()`` makes for ``job``, as the plugin stores its own."""
    from core.choices import JobStatusChoices

    kwargs = {'job_id': str(job.job_id), 'job': job, **arguments}
    if timeout is not None:
        kwargs['job_timeout'] = timeout
    if job.status == JobStatusChoices.STATUS_SCHEDULED and job.scheduled:
        return Push('enqueue_at', (job.scheduled, runner.handle), kwargs)
    return Push('enqueue', (runner.handle,), kwargs)


def _insert_row(using, job, runner, push, stamp):
    """The job's dispatch row, stamped ``sent`` (its task is in Redis) or ``owed`` (the relay sends it)."""
    _, table = _tables()
    columns = ', '.join(ROW_COLUMNS)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {table} ({columns}, worker_host, {stamp}) '
            f"VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp(), 0, '', clock_timestamp()) "
            f'ON CONFLICT (job_id) DO NOTHING RETURNING id',
            [job.pk, job.job_id, compat.rq_queue_name(job)[:100], runner_path(runner)[:255], push.method, seal(push)],
        )
        return cursor.fetchone() is not None


def _listed_before(job, using):
    from .models import RetryEvent

    return RetryEvent.objects.using(using).filter(job_uuid=job.job_id,
                                                  kind=RetryEventKindChoices.KIND_NOT_ADOPTED).exists()


def _list(job, reason, report, using, dry_run):
    """A waiting job that cannot be rebuilt: left as it is, one event (once per job)."""
    report.listed.append((job.job_id, reason))
    if dry_run or _listed_before(job, using):
        return
    events.record(
        RetryEventKindChoices.KIND_NOT_ADOPTED, job=job, using=using,
        detail=f'Left {job.status} by NetBox without the plugin, and not sent: {reason}. Nothing runs it; run it '
               f'again from NetBox if it should run, then delete this job.',
    )


def _adopt_waiting(job, task, alive, report, using, dry_run):
    status = _task_status(task) if task is not None else None
    worker = getattr(task, 'worker_name', None) if task is not None else None
    if status in _RUNNABLE or (status == 'started' and worker in alive):
        try:
            runner, arguments = _runner_of_task(task)
        except TaskUnreadable as e:
            return _list(job, f'{e}; RQ runs it as it is, unwatched', report, using, dry_run)
        report.covered.append(job.job_id)
        if dry_run or not _insert_row(using, job, runner, _push(job, runner, arguments, task.timeout), 'sent'):
            return None
        return events.record(
            RetryEventKindChoices.KIND_ADOPTED, job=job, runner=runner, using=using,
            detail=f'Left {job.status} by NetBox without the plugin; its task is in Redis ({status}). It is now kept '
                   f'like the jobs the plugin enqueues: its task is sent again should Redis lose it, and it runs once.',
        )
    if status in _OPERATOR_ENDED:
        return _list(job, f'its task was {status} in RQ (Background Tasks), a decision that is not undone', report,
                     using, dry_run)
    if task is None:
        why = 'Redis no longer holds its task'
    elif status == 'started':
        why = f'its task was started by RQ worker {worker or "?"}, which is gone, before the job started'
    else:
        why = f'its task is {status} in RQ, and the job never started'
    timeout = None
    try:
        if task is None:
            raise TaskUnreadable('no task')
        runner, arguments = _runner_of_task(task)
        timeout, source = task.timeout, 'its task'
    except TaskUnreadable:
        runner, arguments, source = _rebuilt_runner(job)
        if runner is None:
            return _list(job, f'{why}, and {source}', report, using, dry_run)
    report.rebuilt.append(job.job_id)
    if dry_run or not _insert_row(using, job, runner, _push(job, runner, arguments, timeout), 'owed'):
        return None
    return events.record(
        RetryEventKindChoices.KIND_ADOPTED, job=job, runner=runner, using=using,
        detail=f'Left {job.status} by NetBox without the plugin, and {why}. Rebuilt from {source} and sent again by '
               f'the relay; it runs once.',
    )


def _adopt_running(job, task, alive, report, using, dry_run):
    status = _task_status(task) if task is not None else None
    worker = getattr(task, 'worker_name', None) if task is not None else None
    if status == 'started' and worker in alive:
        report.vouched.append(job.job_id)
        return None
    if task is None:
        why = 'Redis holds no task of it'
    elif status == 'started':
        why = f'RQ worker {worker or "?"}, which ran it, is gone'
    else:
        why = f'its task is {status} in RQ'
    runner = arguments = None
    try:
        if task is None:
            raise TaskUnreadable('no task')
        runner, arguments = _runner_of_task(task)
    except TaskUnreadable:
        runner, arguments, _source = _rebuilt_runner(job)
    report.closed.append(job.job_id)
    if dry_run:
        return None
    error = (f'Left running by NetBox without the plugin, and {why}: no worker runs it any more. Closed by '
             f'netbox-safejobs.')
    detail = error
    if liveness.close_with_netbox(job, runner, error, arguments):
        detail += ' The next run of this periodic job is scheduled by NetBox.'
    elif job.interval:
        detail += ' No next run scheduled: its runner and arguments were only in the task Redis lost.'
    return events.record(RetryEventKindChoices.KIND_ADOPTED, job=job, runner=runner, using=using, detail=detail)


def _adopt_one(pk, queues, alive, report, using, dry_run, close_running):
    from core.models import Job

    job_table, table = _tables()
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        if not dry_run:
            # Another pass holds it (another worker starting), or a worker's claim is under way: theirs to decide.
            cursor.execute(f'SELECT id FROM {job_table} WHERE id = %s FOR UPDATE SKIP LOCKED', [pk])
            if cursor.fetchone() is None:
                return
        # Looked at again under the lock (a fresh snapshot): a claim or another pass may have committed since.
        cursor.execute(f'SELECT 1 FROM {table} WHERE job_id = %s', [pk])
        if cursor.fetchone() is not None:
            return
        job = Job.objects.using(using).filter(pk=pk).first()
        if job is None:
            return
        try:
            task = _read_task(job, queues)
        except TaskUnreadable as e:
            if job.status in CLAIMABLE_STATES:
                _list(job, str(e), report, using, dry_run)
            return
        if job.status in CLAIMABLE_STATES:
            _adopt_waiting(job, task, alive, report, using, dry_run)
        elif job.status == RUNNING and close_running:
            _adopt_running(job, task, alive, report, using, dry_run)
        elif job.status == RUNNING:
            report.left_running.append(job.job_id)


def adopt(using='default', dry_run=False, close_running=True):
    """
    Decide every job NetBox left waiting or running without the plugin (see the module's text); running ones only with
    ``close_running`` (``stuck_job_detection``: off, the plugin closes no job whose worker died). Returns an
    ``AdoptionReport``; never raises for Redis or the database being away (it is reported, and nothing is decided
    from what could not be read).
    """
    report = AdoptionReport(dry_run=dry_run)
    try:
        queues, alive = _redis_view()
    except RedisAway:
        report.redis_down = True
        return report
    try:
        candidates = _candidates(using, get_settings().unknown_push_age)
        for pk, old_enough in candidates:
            if not old_enough:
                report.deferred += 1
                continue
            _adopt_one(pk, queues, alive, report, using, dry_run, close_running)
    except DatabaseError as e:
        report.errors.append(events.redact(events.describe(e)))
    except Exception as e:
        from redis.exceptions import RedisError

        # Redis went away during the pass: what was decided is committed, the rest waits for the next pass.
        if isinstance(e, (RedisError, OSError)):
            report.redis_down = True
        else:
            report.errors.append(events.redact(events.describe(e)))
    level = logging.WARNING if (report.adopted or report.listed or report.errors) else logging.INFO
    if report.adopted or report.listed or report.errors or report.redis_down:
        logger.log(level, 'adoption: %s', report.summary())
    return report


def adopt_and_merge(using='default', dry_run=False, close_running=True):
    """
    What a guarded worker does when it starts: adopt what NetBox left without the plugin, then merge the chains of
    periodic jobs that have more than one future run (``chains.merge``) once every waiting job has a row (so that the
    run kept is one that runs). Returns the ``AdoptionReport``, with the merge's report in ``chains``.
    """
    report = adopt(using, dry_run=dry_run, close_running=close_running)
    if not report.redis_down and not report.errors:
        report.chains = chains.merge(using, dry_run=dry_run)
        report.errors += report.chains.errors
    return report

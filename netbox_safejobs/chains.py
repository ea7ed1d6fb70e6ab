"""
One chain per periodic job: a job that repeats at an interval (a system job, a scheduled script, a data source's
periodic sync) has at most one future run at a time.

NetBox schedules a periodic job's next run in the ``finally`` of ``JobRunner.handle()``, and a system job's also from
``enqueue_once()`` when a worker starts. NetBox 4.2 – 4.6.1 keep neither from doing it while the other already has:
the job then has two chains of runs, each run scheduling its own next one, and runs twice per interval, more after
every restart that races a run (#21167, #22232). NetBox 4.6.2 checks, under its advisory lock, for system jobs only.
On every supported NetBox the plugin

- skips the next run ``handle()`` schedules for the run it just ended when the chain already has a future run
  (``next_run_taken``, called by ``dispatch.wrap_enqueue``), under NetBox's own advisory lock for job schedules
  (``JOB_SCHEDULES_LOCK``), with one ``chain merged`` event; the next run is never scheduled in the past
  either (``compat.next_run_floor``, #20243);
- at a worker's start-up and in ``netbox safejobs_recover`` (``merge``), finds the chains that already have two or more
  future runs and keeps one: the earliest of those the plugin holds a push for (so that it runs), the others deleted
  through NetBox's ``Job.delete()``, whose RQ tasks the plugin cancels once the delete commits. One event per chain.

What one chain is:

- a system job (``registry['system_jobs']``, no object): its name, as NetBox's own check of 4.6.2 knows it;
- any other periodic job: its name, object, interval and user, and the arguments its runs pass to ``run()``: NetBox
  keeps two schedules of one script with different data apart (#22232), and so does the plugin. A script's arguments
  hold a copy of the request that scheduled it, request id included, so schedules made separately never compare
  equal: only the runs of one schedule do. The arguments are read from the plugin's stored push, or from the task in
  Redis for a run without one, and compared as pickled; a run whose arguments cannot be read is a chain of its own and
  is never merged.
"""

import logging
import pickle
import time
from dataclasses import dataclass, field

from django.db import connections, transaction
from django.db.models.functions import Coalesce
from netbox.constants import ADVISORY_LOCK_KEYS

from . import compat, events
from .choices import CLAIMABLE_STATES, RetryEventKindChoices
from .jobs import system_job_runners
from .payload import BadPayload, Push, unseal
from .queues import get_push_queue

__all__ = (
    'ChainReport',
    'merge',
    'next_run_taken',
    'run_arguments',
)

logger = logging.getLogger('netbox_safejobs.chains')

# NetBox's advisory lock key for job schedules (every supported NetBox), held by ``enqueue_once()`` and, from NetBox
# 4.6.2, by ``handle()`` while it reschedules a system job (#22232). The plugin's checks of a chain take the same key,
# so that they and NetBox's own exclude each other.
JOB_SCHEDULES_LOCK = ADVISORY_LOCK_KEYS['job-schedules']
# Seconds to wait for NetBox's advisory lock for job schedules before checking a chain without it, and between tries.
LOCK_WAIT = 10.0
LOCK_POLL = 0.05

# The keyword arguments RQ's ``Queue.enqueue()`` and ``enqueue_at()`` take for themselves and never pass on to the
# task's function (``Queue.parse_args``; one set for RQ 2.1 – 2.12, the RQ the supported NetBox releases install).
# NetBox passes its caller's extra keyword arguments to RQ as they are, so ``job_timeout`` sits among a script's
# arguments in the push and not in the task. An option missing here only makes two runs of a periodic job look
# different: they are then never merged.
RQ_ENQUEUE_OPTIONS = frozenset({
    'job_timeout', 'description', 'result_ttl', 'ttl', 'failure_ttl', 'depends_on', 'job_id', 'at_front', 'meta',
    'retry', 'repeat', 'on_success', 'on_failure', 'on_stopped', 'webhooks', 'pipeline', 'unique', 'group_id',
})


@dataclass
class ChainReport:
    # (UUID of the run kept, [UUIDs of the runs deleted]) per chain merged (or that would be, in a dry run).
    merged: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    dry_run: bool = False

    @property
    def deleted(self):
        return sum(len(deleted) for _kept, deleted in self.merged)

    def summary(self):
        if self.dry_run:
            return f'would merge {len(self.merged)} periodic job(s) with more than one future run ({self.deleted} ' \
                   f'run(s) deleted)'
        return f'merged {len(self.merged)} periodic job(s) with more than one future run ({self.deleted} run(s) ' \
               f'deleted)'


def run_arguments(kwargs):
    """
    What a run passes to ``run()``, out of the keyword arguments of an enqueue, of a stored push or of an RQ task:
    without the job itself, ``Job.enqueue()``'s own parameters and RQ's options.
    """
    own = compat.job_enqueue_parameters()
    return {key: value for key, value in (kwargs or {}).items()
            if key != 'job' and key not in own and key not in RQ_ENQUEUE_OPTIONS}


def _fingerprint(arguments):
    """The arguments as comparable bytes, or None when they cannot be pickled (never merged then)."""
    if arguments is None:
        return None
    try:
        return pickle.dumps(sorted(arguments.items()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None


def _task_arguments(job):
    """A waiting run's arguments from its RQ task, or None (no task, or it cannot be read)."""
    from rq.job import Job as RQJob

    try:
        task = RQJob.fetch(str(job.job_id), connection=get_push_queue(compat.rq_queue_name(job)).connection)
        return run_arguments(task.kwargs)
    except Exception:
        return None


def _stored_arguments(job, using):
    """A waiting run's arguments: from the plugin's stored push, else from its task in Redis; None when unknown."""
    from .models import JobDispatch

    rows = list(JobDispatch.objects.using(using).filter(job_id=job.pk, claimed__isnull=True)
                .values_list('payload', flat=True)[:1])
    if not rows:
        return _task_arguments(job)
    if rows[0] is None:
        return None
    try:
        push = unseal(rows[0])
    except BadPayload:
        return None
    return run_arguments(push.kwargs) if isinstance(push, Push) else None


def _lock(using, wait=LOCK_WAIT):
    """
    NetBox's advisory lock for job schedules, until the end of the current transaction; granted at once in a session
    that holds it already (NetBox's ``handle()`` of 4.6.2+ holds it around the enqueue of a system job's next run).
    Waited for up to ``wait`` seconds, then done without, and said: behind a transaction pooler (PgBouncer) NetBox's
    session-level lock can be held by another server connection of this very process, which releases it only once
    this enqueue returns. Returns whether it is held.
    """
    deadline = time.monotonic() + wait
    with connections[using].cursor() as cursor:
        while True:
            cursor.execute('SELECT pg_try_advisory_xact_lock(%s)', [JOB_SCHEDULES_LOCK])
            if cursor.fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                logger.warning("NetBox's advisory lock for job schedules is held elsewhere for more than %ss; the "
                               'chain of a periodic job is checked without it', wait)
                return False
            time.sleep(LOCK_POLL)


def _is_system_job(name, object_type_id, object_id, runner=None):
    if object_type_id is not None or object_id is not None:
        return False
    registered = system_job_runners().get(name)
    return registered is not None and (runner is None or issubclass(runner, registered))


def _describe(run):
    """A waiting run as an event names it: its UUID, and when it is due."""
    if run.scheduled:
        return f'{run.job_id} (scheduled for {run.scheduled:%Y-%m-%d %H:%M:%S %Z})'.replace(' )', ')')
    return f'{run.job_id} ({run.status})'


def _waiting_order():
    return Coalesce('scheduled', 'created'), 'pk'


def next_run_taken(runner, kwargs, finished, using='default'):
    """
    The future run that already continues the chain of ``finished``, whose next run NetBox's ``handle()`` is about to
    enqueue with ``kwargs``; or ``None``, and the next run is enqueued. Called inside the enqueue's transaction: it
    takes NetBox's advisory lock for job schedules, held until that transaction commits with the new run, so that
    two workers (or a worker starting, in ``enqueue_once()``) never both add one. Records one event when it finds one.
    """
    from core.models import Job, ObjectType

    _lock(using)
    name = kwargs.get('name') or runner.name
    instance = kwargs.get('instance')
    runs = Job.objects.using(using).filter(name=name, status__in=CLAIMABLE_STATES).exclude(pk=finished.pk)
    if instance is None:
        runs = runs.filter(object_type__isnull=True, object_id__isnull=True)
        system = _is_system_job(name, None, None, runner)
    else:
        object_type = ObjectType.objects.db_manager(using).get_for_model(instance, for_concrete_model=False)
        runs = runs.filter(object_type=object_type, object_id=instance.pk)
        system = False
    # Only a run at the same interval continues the chain, as NetBox's own check of a system job filters (4.6.2): a
    # one-off run of a system job (``MySystemJob.enqueue()``, no interval) would otherwise end its periodic chain.
    runs = runs.filter(interval=kwargs.get('interval'))
    wanted = None
    if not system:
        runs = runs.filter(user=kwargs.get('user'))
        wanted = _fingerprint(run_arguments(kwargs))
        if wanted is None:
            return None
    for run in runs.order_by(*_waiting_order()):
        if system or _fingerprint(_stored_arguments(run, using)) == wanted:
            events.record(
                RetryEventKindChoices.KIND_CHAIN_MERGED, job=finished, runner=runner, using=using,
                detail=f'Next run not scheduled: this periodic job already has one waiting, job {_describe(run)}. '
                       f'A second would start a second chain of runs, each scheduling its own next one (NetBox '
                       f'#21167, #22232).',
            )
            return run
    return None


def _chains_with_duplicates(using):
    """Groups of primary keys of waiting runs of periodic jobs that are one chain, each of two runs or more."""
    from core.models import Job

    rows = (Job.objects.using(using).filter(status__in=CLAIMABLE_STATES, interval__isnull=False).order_by()
            .values_list('pk', 'name', 'object_type_id', 'object_id', 'interval', 'user_id'))
    groups = {}
    for pk, name, object_type_id, object_id, interval, user_id in rows:
        if _is_system_job(name, object_type_id, object_id):
            key = ('system', name)
        else:
            key = ('job', name, object_type_id, object_id, interval, user_id)
        groups.setdefault(key, []).append(pk)
    for key, pks in groups.items():
        if len(pks) < 2:
            continue
        if key[0] == 'system':
            yield pks
            continue
        by_arguments = {}
        for run in Job.objects.using(using).filter(pk__in=pks):
            fingerprint = _fingerprint(_stored_arguments(run, using))
            if fingerprint is not None:
                by_arguments.setdefault(fingerprint, []).append(run.pk)
        yield from (same for same in by_arguments.values() if len(same) >= 2)


def _merge_chain(pks, using, dry_run, report):
    from core.models import Job

    from .models import JobDispatch

    with transaction.atomic(using=using):
        runs = Job.objects.using(using).filter(pk__in=pks, status__in=CLAIMABLE_STATES)
        if not dry_run:
            _lock(using)
            # A run a worker is claiming right now is skipped, not waited for: it is no longer a future run.
            runs = runs.select_for_update(skip_locked=True)
        runs = list(runs)
        if len(runs) < 2:
            return
        pushed = set(JobDispatch.objects.using(using).filter(job_id__in=[run.pk for run in runs],
                                                              claimed__isnull=True).values_list('job_id', flat=True))
        # The earliest run that will run: one the plugin holds a push for, before one it holds none for (a run
        # NetBox left without a task is not kept over one that has one).
        runs.sort(key=lambda run: (run.pk not in pushed, run.scheduled or run.created, run.pk))
        kept, extra = runs[0], runs[1:]
        report.merged.append((kept.job_id, [run.job_id for run in extra]))
        if dry_run:
            return
        for run in extra:
            run.delete(using=using)
        deleted = ', '.join(_describe(run) for run in extra)
        events.record(
            RetryEventKindChoices.KIND_CHAIN_MERGED, job=kept, using=using,
            detail=f'This periodic job had {len(runs)} future runs, each of which would schedule its own next one '
                   f'(NetBox #21167, #22232). Kept this one, the earliest that will run; deleted {deleted}, and '
                   f'cancelled their tasks.',
        )


def merge(using='default', dry_run=False):
    """
    Merge every chain with two or more future runs into one (``dry_run``: only report them). Returns a
    ``ChainReport``; never raises for a database or Redis failure (it is reported).
    """
    report = ChainReport(dry_run=dry_run)
    try:
        for pks in list(_chains_with_duplicates(using)):
            _merge_chain(pks, using, dry_run, report)
    except Exception as e:
        report.errors.append(events.redact(events.describe(e)))
    if report.merged and not dry_run:
        logger.warning('%s', report.summary())
    return report

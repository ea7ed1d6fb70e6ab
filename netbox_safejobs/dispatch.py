"""
Commit-bound, crash-safe dispatch of jobs to RQ: the write side of the outbox.

``JobRunner.enqueue`` is wrapped (see ``patches.py``). NetBox's own ``Job.enqueue`` still runs and saves the Job
row; the RQ push it makes, whether at once (NetBox <= 4.2.5) or from ``transaction.on_commit`` (4.2.6+, #18880),
is *captured* instead of sent. The plugin then

1. stores the push in a ``JobDispatch`` row in the same transaction as the Job row (the outbox), pickled as RQ
   would pickle it and signed (``payload.py``), so a task that cannot be serialized fails the enqueue before commit,
   never after it;
2. registers its own on-commit callback, on the database alias the Job was written to, that sends the push and
   stamps the row ``sent``. Django drops the callback on rollback (of the transaction or of the savepoint it was
   registered in), so nothing reaches Redis for a job that does not exist. Outside a transaction it runs at once;
3. catches any failure of the push: the data is committed, so raising now would only hide that. The row is stamped
   ``owed`` at once, one ``dispatch failed`` event is recorded, and the relay of every worker (``relay.py``) sends
   it as soon as Redis answers.

A task the plugin pushes carries a marker in its RQ ``meta``: it was pushed after its row committed, so a worker
that finds no row knows the row was deleted, and drops the task at once (``guard.py``).

``Job.delete()`` cancels the job's RQ task only once the deleting transaction commits (``deferred_cancel``): stock
NetBox cancels it at once, so a rolled-back delete left a pending job with a cancelled task.

The capture is scoped to the calling thread and to the call of ``Job.enqueue``: ``django_rq.get_queue`` and
``transaction.on_commit``, as seen by the module defining ``Job.enqueue``, behave exactly as before for everyone else.
"""

import functools
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial, wraps

from django.core.signals import request_finished, request_started
from django.db import DatabaseError, connections, router, transaction

from . import chains, compat, events, stopping
from .choices import CLAIMABLE_STATES, RetryEventKindChoices
from .payload import Push, runner_path, seal
from .queues import get_push_queue, redis_key

__all__ = (
    'ASYNC_COMMIT',
    'PUSH_FAILURE_GAP',
    'PUSH_FAILURE_HOLD',
    'PUSH_MARKER',
    'CapturedPush',
    'OnCommitProxy',
    'RQModuleProxy',
    'capturing',
    'defer',
    'deferred_cancel',
    'forget_push_failure',
    'mark_owed',
    'mark_sent',
    'push',
    'pushes_deferred',
    'pushes_deferred_to_relay',
    'sending',
    'store_task',
    'successors_held',
    'wrap_delete',
    'wrap_delete_task',
    'wrap_enqueue',
)

logger = logging.getLogger('netbox_safejobs.dispatch')

_local = threading.local()

# The key in an RQ task's meta that says: pushed by netbox-safejobs, after the Job row committed.
PUSH_MARKER = 'netbox_safejobs'

# Appended to the WHERE clause of a bookkeeping statement run in autocommit (outside any transaction): the statement's
# own transaction commits without waiting for the WAL flush (``set_config(..., true)`` is ``SET LOCAL``, in the same
# round trip). A synchronous commit costs a disk flush, several milliseconds on common disks, and stock NetBox makes
# none of these writes. Used only where losing the write to a PostgreSQL crash is harmless: the stamp of a push
# (an unstamped row is owed after ``unknown_push_age``, and a push sent twice starts once), the claim and the
# release of a lease (``guard._lease_sql``).
ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"


@dataclass
class CapturedPush:
    """What NetBox asked RQ to do: ``queue.<method>(*args, **kwargs)`` on the queue ``queue_name``."""

    queue_name: str
    method: str
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def send(self):
        """Push to RQ, marked as pushed by the plugin after its row committed (see ``PUSH_MARKER``)."""
        kwargs = dict(self.kwargs)
        kwargs['meta'] = {**(kwargs.get('meta') or {}), PUSH_MARKER: 1}
        # The push itself is never captured again (``event_actions``: inside an action, outside a transaction, the
        # on-commit callback runs at once).
        _local.sending = getattr(_local, 'sending', 0) + 1
        try:
            return getattr(get_push_queue(self.queue_name), self.method)(*self.args, **kwargs)
        finally:
            _local.sending -= 1


def sending():
    """Whether this thread is sending a stored push to RQ right now (``CapturedPush.send``)."""
    return bool(getattr(_local, 'sending', 0))


class _CapturingQueue:
    """Stands in for the RQ queue inside a captured ``Job.enqueue``: records the push instead of sending it."""

    def __init__(self, name, sink):
        self.name = name
        self._sink = sink

    def enqueue(self, *args, **kwargs):
        self._sink.append(CapturedPush(self.name, 'enqueue', args, kwargs))

    def enqueue_at(self, *args, **kwargs):
        self._sink.append(CapturedPush(self.name, 'enqueue_at', args, kwargs))

    def __getattr__(self, attr):
        # Anything else NetBox might ask of the queue is answered by the real one.
        return getattr(get_push_queue(self.name), attr)


def _sink():
    stack = getattr(_local, 'stack', None)
    return stack[-1] if stack else None


@contextmanager
def capturing():
    """Capture the pushes ``Job.enqueue`` makes in this thread while the block runs; yields the list of them."""
    stack = getattr(_local, 'stack', None)
    if stack is None:
        stack = _local.stack = []
    sink = []
    stack.append(sink)
    try:
        yield sink
    finally:
        stack.pop()


class RQModuleProxy:
    """The ``django_rq`` module as seen by ``core.models.jobs``: ``get_queue`` captures while a capture is open."""

    def __init__(self, module):
        self._module = module

    def get_queue(self, name='default', *args, **kwargs):
        sink = _sink()
        if sink is not None:
            return _CapturingQueue(name, sink)
        using = getattr(_local, 'deleting', None)
        if using is not None:
            return _DeferringQueue(name, using)
        return self._module.get_queue(name, *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._module, attr)


class OnCommitProxy:
    """
    The ``django.db.transaction`` module as seen by ``core.models.jobs``. A callback that is a push to a capturing
    queue is run at once, which only records it; the plugin then defers the real push itself. Everything else
    passes through untouched.
    """

    def __init__(self, module):
        self._module = module

    def on_commit(self, func, *args, **kwargs):
        target = getattr(func, 'func', None)
        if _sink() is not None and isinstance(getattr(target, '__self__', None), _CapturingQueue):
            return func()
        return self._module.on_commit(func, *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._module, attr)


class _DeferringQueue:
    """Stands in for the RQ queue inside ``Job.delete()``: the task is cancelled once the delete commits."""

    def __init__(self, name, using):
        self.name = name
        self._using = using

    def fetch_job(self, job_id):
        return _DeferredCancel(self.name, job_id, self._using)

    def __getattr__(self, attr):
        return getattr(get_push_queue(self.name), attr)


class _DeferredCancel:
    """What ``Job.delete()`` cancels: registered to run after commit, dropped on rollback."""

    def __init__(self, queue_name, job_id, using):
        self.queue_name = queue_name
        self.id = job_id
        self._using = using

    def cancel(self, *args, **kwargs):
        transaction.on_commit(partial(_cancel_task, self.queue_name, self.id), using=self._using, robust=True)

    def __bool__(self):
        return True


def _cancel_task(queue_name, job_id):
    """Cancel a deleted job's RQ task, as NetBox does, after the delete committed. Never raises."""
    from rq.exceptions import InvalidJobOperation

    try:
        task = get_push_queue(queue_name).fetch_job(job_id)
        if task is not None:
            task.cancel()
    except InvalidJobOperation:
        pass
    except Exception as e:
        # The row is gone; a task that still runs finds no row and is dropped by the worker guard.
        logger.warning('job %s: RQ task not cancelled after the delete (%s); a worker will drop it', job_id,
                       events.redact(events.describe(e)))


@contextmanager
def deferred_cancel(using):
    """While the block runs, ``Job.delete()`` in this thread cancels the RQ task after commit."""
    previous = getattr(_local, 'deleting', None)
    _local.deleting = using
    try:
        yield
    finally:
        _local.deleting = previous


def wrap_delete(original):
    """The wrapper installed as ``Job.delete``."""

    @wraps(original)
    def delete(self, *args, **kwargs):
        using = kwargs.get('using') or self._state.db or router.db_for_write(type(self))
        with deferred_cancel(using), transaction.atomic(using=using):
            # The Job row first, then its dispatch row (Django's cascade deletes that one first): the order the
            # worker's claim takes them in. In the other order a delete and a claim of one job deadlock, and
            # PostgreSQL aborts one of them: the operator's delete answered 500.
            if self.pk is not None:
                list(type(self)._base_manager.using(using).select_for_update().filter(pk=self.pk)
                     .values_list('pk', flat=True))
                # A running job's work horse is stopped once the delete commits (NetBox #23138).
                stopping.stop_when_deleted(self, using)
            return original(self, *args, **kwargs)

    delete.__safejobs_original__ = original
    return delete


def _close_deleted_task(job_id):
    """
    An operator deleted a job's RQ task from Background Tasks: a decision, not a loss. The job, if it still waits, is
    closed with that reason, its stored push erased, and one event recorded; nothing sends it again.
    """
    from core.models import Job

    from .models import JobDispatch

    using = router.db_for_write(Job)
    try:
        with transaction.atomic(using=using):
            # Locked as it waits: a worker's claim of it now either committed first (the job runs, and keeps its
            # lease) or waits for this close and then finds the job failed, and does not run it.
            job = Job.objects.using(using).select_for_update().filter(
                job_id=job_id, status__in=CLAIMABLE_STATES).first()
            if job is None:
                _drop_deleted_task(job_id, using)
                return
            JobDispatch.objects.using(using).filter(job=job, claimed__isnull=True).delete()
            job.terminate(status='failed', error='Its task was deleted from Background Tasks by an operator; '
                                                  'netbox-safejobs does not send it again.')
        events.record(RetryEventKindChoices.KIND_OPERATOR_STOPPED, job=job, using=using,
                      detail='Task deleted from Background Tasks: the job is closed as failed and is not sent '
                             'again. Enqueue it anew if it should run.')
    except Exception:
        logger.exception('job %s: not closed after its task was deleted from Background Tasks', job_id)


def _drop_deleted_task(task_id, using):
    """
    An operator deleted the RQ task of a task without a Job (a webhook, ``webhooks.py``; a push of another plugin's
    event-rule action, ``event_actions.py``) before a worker took it: its stored push is dropped, in one statement,
    with one event, so that neither the relay's sweep (which sees the task gone) nor a Redis restore sends it again.
    A webhook being sent (its lease held) is left to its worker.
    """
    from .models import JobDispatch

    try:
        task_uuid = uuid.UUID(str(task_id))
    except ValueError:
        return
    with connections[using].cursor() as cursor:
        cursor.execute(f'DELETE FROM {JobDispatch._meta.db_table} WHERE job_uuid = %s AND job_id IS NULL '
                       f'AND claimed IS NULL RETURNING name, runner, queue_name', [task_uuid])
        row = cursor.fetchone()
    if row is None:
        return
    name, runner, queue_name = row
    events.record(RetryEventKindChoices.KIND_OPERATOR_STOPPED, job_uuid=task_uuid, job_name=name, runner=runner,
                  queue=queue_name, using=using,
                  detail='Task deleted from Background Tasks: it is not sent, and not sent again.')


def wrap_delete_task(original):
    """The wrapper of NetBox's ``delete_rq_job`` (Background Tasks, UI and REST API)."""

    @wraps(original)
    def delete_rq_job(job_id, *args, **kwargs):
        result = original(job_id, *args, **kwargs)
        _close_deleted_task(job_id)
        return result

    delete_rq_job.__safejobs_original__ = original
    return delete_rq_job


# --------------------------------------------------------------------------------------------------------------------
# The outbox row
# --------------------------------------------------------------------------------------------------------------------

# The columns of a JobDispatch row that plain SQL writes when it makes one (the enqueue below, the worker's claim in
# guard.py) and that the relay reads back, in this order.
ROW_COLUMNS = ('job_id', 'job_uuid', 'queue_name', 'runner', 'method', 'payload', 'created', 'recoveries')

@functools.cache
def _statements():
    """The outbox row's statements, built once from the model's metadata."""
    from .models import JobDispatch

    table = JobDispatch._meta.db_table
    # The database's clock, never the application host's: the relay compares these stamps with it.
    sql = {
        'insert': (
            f'INSERT INTO {table} ({", ".join(ROW_COLUMNS)}, worker_host) '
            f"VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp(), 0, '') RETURNING id"
        ),
        'sent': (
            f'UPDATE {table} SET sent = clock_timestamp(), owed = NULL '
            f'WHERE id = %s AND sent IS NULL AND claimed IS NULL'
        ),
        'owed': (
            f'UPDATE {table} SET owed = clock_timestamp() '
            f'WHERE id = %s AND sent IS NULL AND claimed IS NULL AND owed IS NULL'
        ),
    }
    for name in ('sent', 'owed'):
        sql[name + '_async'] = f'{sql[name]} AND {ASYNC_COMMIT}'
    return sql


def _insert(using, values):
    """
    INSERT the dispatch row with one plain statement. Not ``Model.save()``: that would run every ``pre_save`` and
    ``post_save`` receiver NetBox and other plugins connect for all models (change logging, search, event rules) on
    the hot path of every enqueue, for a row none of them is interested in.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(_statements()['insert'], values)
        return cursor.fetchone()[0]


def _stamp(using, statement, dispatch_id):
    """Stamp a row sent or owed. Returns False (and logs) when the database cannot be reached."""
    connection = connections[using]
    # Inside a transaction (an on-commit callback of an outer atomic block), the plain statement: the setting would
    # lower the durability of the whole transaction.
    sql = _statements()[statement if connection.in_atomic_block else statement + '_async']
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, [dispatch_id])
        return True
    except DatabaseError as e:
        # An unstamped row stays "written": the relay owes it after unknown_push_age, by the database's clock.
        logger.warning('dispatch row %s not stamped %s (%s); the relay will treat it as owed after '
                       'unknown_push_age', dispatch_id, statement, events.redact(events.describe(e)))
        return False


def mark_sent(using, dispatch_id):
    return _stamp(using, 'sent', dispatch_id)


def mark_owed(using, dispatch_id):
    return _stamp(using, 'owed', dispatch_id)


def defer(job, runner, captured):
    """Store the captured push with the Job row and send it after commit."""
    using = job._state.db or router.db_for_write(type(job))
    # Pickled here, inside the caller's transaction: a task that cannot be serialized fails the enqueue now, and
    # the transaction with it, rather than after commit. RQ pickles the same objects when it receives the push.
    blob = seal(Push(captured.method, captured.args, captured.kwargs))
    dispatch_id = _insert(using, [job.pk, job.job_id, captured.queue_name[:100], runner_path(runner)[:255],
                                  captured.method, blob])
    transaction.on_commit(partial(push, job, runner, captured, using, dispatch_id), using=using, robust=True)


@contextmanager
def pushes_deferred_to_relay():
    """
    While the block runs, pushes in this thread are not attempted: their rows are stamped owed and left to the relay.
    Used while a failed push is being recorded: an event rule on ``dispatch failed`` that enqueues a job (a script)
    would otherwise push again, fail again and record again, until RecursionError.
    """
    depth = getattr(_local, 'no_push', 0)
    _local.no_push = depth + 1
    try:
        yield
    finally:
        _local.no_push = depth


def pushes_deferred():
    """Whether this thread is inside ``pushes_deferred_to_relay()``: a push is then stamped owed, not attempted."""
    return bool(getattr(_local, 'no_push', 0))


# How long a failed push holds back the next pushes of the same thread. Inside a web request: until the request ends.
# Elsewhere: while they follow each other (each within PUSH_FAILURE_GAP seconds of the last), at most
# PUSH_FAILURE_HOLD seconds. A Redis that accepts connections and never answers costs each push its whole timeout,
# and a request committing many jobs or firing many webhooks (a bulk import) would wait that long for each of them.
PUSH_FAILURE_GAP = 1.0
PUSH_FAILURE_HOLD = 30.0


@dataclass
class _PushFailure:
    at: float
    last: float
    reason: str
    in_request: bool


def _push_failures():
    """This thread's failed pushes still holding back the next ones: ``{queues.redis_key: _PushFailure}``."""
    failures = getattr(_local, 'push_failures', None)
    if failures is None:
        failures = _local.push_failures = {}
    return failures


def _push_failure(redis, now):
    """The failed push to the Redis ``redis`` (``queues.redis_key``) that holds this thread's back, or None."""
    failures = _push_failures()
    failure = failures.get(redis)
    if failure is not None and not failure.in_request and (
            now - failure.last >= PUSH_FAILURE_GAP or now - failure.at >= PUSH_FAILURE_HOLD):
        del failures[redis]
        failure = None
    return failure


def forget_push_failure(**kwargs):
    """
    A request starts or ends in this thread (``request_started``, ``request_finished``): its next push is tried
    again. Also for a test that starts.
    """
    _local.push_failures = {}
    _local.in_request = kwargs.get('signal') is request_started


def push(job, runner, captured, using, dispatch_id, job_uuid=None, job_name='',
         saved='The job is committed and its push is stored as owed'):
    """
    Send one stored push to RQ, after commit. Never raises: the data is committed and the push is stored. A task that
    is not a job (a webhook, ``webhooks.py``) passes ``job=None`` with its ``job_uuid`` and ``job_name``, and says in
    ``saved`` what was committed and stored.

    Once a push of this thread to a Redis fails, the next ones to that Redis of the same request (outside a request:
    those that follow it closely, ``PUSH_FAILURE_GAP``) are not tried: each is stored as owed at once, with its own
    event, and the relay sends them all as soon as Redis answers. The caller waits for one failure, however many
    pushes it made.
    """
    if pushes_deferred():
        # An event rule on the plugin's own "dispatch failed" event, enqueuing while that event is recorded.
        mark_owed(using, dispatch_id)
        return
    now = time.monotonic()
    try:
        redis = redis_key(get_push_queue(captured.queue_name).connection)
    except Exception:
        redis = captured.queue_name
    failure = _push_failure(redis, now)
    if failure is not None:
        failure.last = now
        detail = (f'Not tried: a push {"of this request" if failure.in_request else "of this process thread"} '
                  f'failed {now - failure.at:.1f}s earlier ({failure.reason})')
    else:
        try:
            captured.send()
        except Exception as e:
            detail = events.describe(e)
            failed = time.monotonic()
            _push_failures()[redis] = _PushFailure(failed, failed, events.redact(detail),
                                                   getattr(_local, 'in_request', False))
        else:
            mark_sent(using, dispatch_id)
            return
    mark_owed(using, dispatch_id)
    with pushes_deferred_to_relay():
        events.record(
            RetryEventKindChoices.KIND_DISPATCH_FAILED,
            job=job,
            job_uuid=job_uuid,
            job_name=job_name,
            runner=runner,
            queue=captured.queue_name,
            detail=f'{detail}. {saved}; the relay of every worker sends it as soon as Redis answers.',
            using=using,
        )


request_started.connect(forget_push_failure, dispatch_uid='netbox_safejobs.dispatch.request_started')
request_finished.connect(forget_push_failure, dispatch_uid='netbox_safejobs.dispatch.request_finished')


def store_task(queue_name, method, args, kwargs, runner, name, saved):
    """
    Store the push of a task that is not a NetBox job (an event rule's webhook, ``webhooks.py``; a push of another
    plugin's event-rule action, ``event_actions.py``) in a ``JobDispatch`` row without a Job, with the caller's
    transaction, and send it after commit (at once outside one). ``kwargs['job_id']`` is the task's id, the row's
    ``job_uuid``. A database error raises, as it would have for the change itself; Redis being away never does.
    """
    from .models import JobDispatch

    task_id = uuid.UUID(str(kwargs['job_id']))
    captured = CapturedPush(queue_name, method, tuple(args), kwargs)
    blob = seal(Push(method, captured.args, kwargs))
    using = router.db_for_write(JobDispatch)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {JobDispatch._meta.db_table} (job_id, job_uuid, name, queue_name, runner, method, payload, '
            f"created, recoveries, worker_host) VALUES (NULL, %s, %s, %s, %s, %s, %s, clock_timestamp(), 0, '') "
            f'RETURNING id',
            [task_id, name[:200], queue_name[:100], runner[:255], method, blob],
        )
        row_id = cursor.fetchone()[0]
    transaction.on_commit(partial(push, None, runner, captured, using, row_id, job_uuid=task_id, job_name=name,
                                  saved=saved), using=using, robust=True)
    return task_id


# --------------------------------------------------------------------------------------------------------------------
# Periodic jobs whose row was deleted mid-run
# --------------------------------------------------------------------------------------------------------------------

class HeldRun:
    """
    One run of a job in this thread; ``row_deleted`` once a save found its row gone, ``lease_lost`` once a save found
    the job closed by the liveness check: either way its next run is not this run's to schedule.
    """

    def __init__(self, job, runner):
        self.job = job
        self.runner = runner
        self.row_deleted = False
        self.lease_lost = False
        self.successor_dropped = False


@contextmanager
def successors_held(job, runner):
    """
    While NetBox's ``handle()`` runs ``job``: if its row turns out to be deleted, the next run NetBox schedules for a
    periodic job in its ``finally`` is not enqueued. An operator who deleted a periodic job mid-run wanted it gone.
    """
    stack = getattr(_local, 'runs', None)
    if stack is None:
        stack = _local.runs = []
    held = HeldRun(job, runner)
    stack.append(held)
    try:
        yield held
    finally:
        stack.pop()


def _next_run_of(cls, kwargs):
    """
    The run in this thread whose next run this enqueue is: NetBox's ``handle()`` enqueuing, in its ``finally``, the
    next run of the periodic job it just ended (terminated, same runner, same interval). ``None`` for any other enqueue.
    """
    stack = getattr(_local, 'runs', None)
    if not stack:
        return None
    from core.choices import JobStatusChoices

    held = stack[-1]
    job = held.job
    if (cls is held.runner and job.interval and kwargs.get('interval') == job.interval
            and job.status in JobStatusChoices.TERMINAL_STATE_CHOICES):
        return held
    return None


def _successor_of_deleted(cls, kwargs):
    stack = getattr(_local, 'runs', None)
    if not stack:
        return None
    held = stack[-1]
    if (held.row_deleted or held.lease_lost) and held.job.interval and kwargs.get('interval') == held.job.interval:
        return held
    return None


# --------------------------------------------------------------------------------------------------------------------
# The wrapper of JobRunner.enqueue
# --------------------------------------------------------------------------------------------------------------------

def _enqueue_captured(original, cls, args, kwargs, using):
    with capturing() as pushes:
        job = original(cls, *args, **kwargs)
    if not pushes:
        logger.warning('Job.enqueue pushed nothing the plugin could capture for job %s; left to NetBox',
                       getattr(job, 'job_id', '?'))
    for captured in pushes:
        defer(job, cls, captured)
    return job


def wrap_enqueue(original):
    """The wrapper installed as ``JobRunner.enqueue``; ``original`` is NetBox's function (unbound)."""

    @wraps(original)
    def enqueue(cls, *args, **kwargs):
        held = _successor_of_deleted(cls, kwargs)
        if held is not None:
            held.successor_dropped = True
            logger.info('job %s: its row was deleted, or the job was closed, while it ran; its next run is not '
                        'scheduled by this run', held.job.job_id)
            return None
        # immediate=True runs the job synchronously in this process: there is no push to make safe.
        if kwargs.get('immediate'):
            return original(cls, *args, **kwargs)
        from core.models import Job

        using = router.db_for_write(Job)
        # The Job row and its stored push commit together or not at all. Inside the caller's transaction that takes a
        # savepoint: an enqueue that raises (a name that fails full_clean, a task that cannot be pickled) then leaves
        # the caller's transaction as stock NetBox leaves it, usable, instead of marked for rollback. In autocommit
        # the block is the transaction itself.
        with transaction.atomic(using=using, savepoint=connections[using].in_atomic_block):
            ended = _next_run_of(cls, kwargs)
            if ended is not None:
                # One chain per periodic job: not a second future run (NetBox #21167, #22232), and none in the past
                # (#20243). The existing run is returned, as enqueue_once() returns it: a runner's own enqueue()
                # (SyncDataSourceJob's) reads the job it gets back.
                waiting = chains.next_run_taken(cls, kwargs, ended.job, using)
                if waiting is not None:
                    return waiting
                kwargs['schedule_at'] = compat.next_run_floor(kwargs.get('schedule_at'))
            return _enqueue_captured(original, cls, args, kwargs, using)

    enqueue.__safejobs_original__ = original
    return enqueue

"""
Commit-bound, crash-safe dispatch of jobs to RQ.

``JobRunner.enqueue`` is wrapped (see ``patches.py``). NetBox's own ``Job.enqueue`` still runs and saves the Job
row; the RQ push it makes, whether at once (NetBox <= 4.2.5) or from ``transaction.on_commit`` (4.2.6+, #18880),
is *captured* instead of sent. The plugin then

1. stores the push in a ``JobDispatch`` row in the same transaction as the Job row (the outbox), pickled as RQ
   would pickle it, so a task that cannot be serialized fails the enqueue before commit, never after it;
2. registers its own on-commit callback, on the database alias the Job was written to, that sends the push. Django
   drops the callback on rollback (of the transaction or of the savepoint it was registered in), so nothing reaches
   Redis for a job that does not exist. Outside a transaction the callback runs at once;
3. catches any failure of the push: the data is committed, so raising now would only hide that. A
   ``dispatch failed`` event is recorded and the stored push is sent by the recovery pass when Redis is back.

The capture is scoped to the calling thread and to the call of ``Job.enqueue``: ``django_rq.get_queue`` and
``transaction.on_commit``, as seen by the module defining ``Job.enqueue``, behave exactly as before for everyone else.
"""

import logging
import pickle
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from django.db import router, transaction

from . import compat, events
from .choices import RetryEventKindChoices

__all__ = (
    'CapturedPush',
    'OnCommitProxy',
    'RQModuleProxy',
    'capturing',
    'defer',
    'push',
    'wrap_enqueue',
)

logger = logging.getLogger('netbox_safejobs.dispatch')

_local = threading.local()


@dataclass
class CapturedPush:
    """What NetBox asked RQ to do: ``queue.<method>(*args, **kwargs)`` on the queue ``queue_name``."""

    queue_name: str
    method: str
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def send(self):
        return getattr(compat.get_push_queue(self.queue_name), self.method)(*self.args, **self.kwargs)


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
        return getattr(compat.get_push_queue(self.name), attr)


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
        if sink is None:
            return self._module.get_queue(name, *args, **kwargs)
        return _CapturingQueue(name, sink)

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


_insert_sql = None


def _insert(using, values):
    """
    INSERT the dispatch row with one plain statement. Not ``Model.save()``: that would run every ``pre_save`` and
    ``post_save`` receiver NetBox and other plugins connect for all models (change logging, search, event rules) on
    the hot path of every enqueue, for a row none of them is interested in.
    """
    global _insert_sql
    from django.db import connections

    from .models import JobDispatch

    if _insert_sql is None:
        _insert_sql = (
            f'INSERT INTO {JobDispatch._meta.db_table} '
            f'(job_id, job_uuid, queue_name, runner, method, payload, created, recoveries, worker_host) '
            f"VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp(), 0, '')"
        )
    with connections[using].cursor() as cursor:
        cursor.execute(_insert_sql, values)


def defer(job, runner, captured):
    """Store the captured push with the Job row and send it after commit."""
    using = job._state.db or router.db_for_write(type(job))
    # Pickled here, inside the caller's transaction: a task that cannot be serialized fails the enqueue now, and
    # the transaction with it, rather than after commit. RQ pickles the same objects when it receives the push.
    payload = pickle.dumps((captured.method, captured.args, captured.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    _insert(using, [job.pk, job.job_id, captured.queue_name[:100], events.runner_path(runner)[:255], captured.method,
                    payload])
    compat.on_commit(partial(push, job, runner, captured, using), using=using)


def push(job, runner, captured, using):
    """Send one push to RQ, after commit. Never raises: the data is committed and the push is stored."""
    try:
        captured.send()
    except Exception as e:
        events.record(
            RetryEventKindChoices.KIND_DISPATCH_FAILED,
            job=job,
            runner=runner,
            queue=captured.queue_name,
            detail=f'{events.describe(e)}. The job is committed and its push is stored; the recovery pass '
                   f'sends it when Redis answers again.',
            using=using,
        )


def wrap_enqueue(original):
    """The wrapper installed as ``JobRunner.enqueue``; ``original`` is NetBox's function (unbound)."""
    from functools import wraps

    @wraps(original)
    def enqueue(cls, *args, **kwargs):
        # immediate=True runs the job synchronously in this process: there is no push to make safe.
        if kwargs.get('immediate'):
            return original(cls, *args, **kwargs)
        from core.models import Job

        # One transaction for the Job row and its stored push, even when the caller has none (autocommit): a process
        # dying between the two would otherwise leave a row with nothing to recover it from. savepoint=False: inside
        # the caller's transaction this adds no query at all.
        with transaction.atomic(using=router.db_for_write(Job), savepoint=False):
            with capturing() as pushes:
                job = original(cls, *args, **kwargs)
            if not pushes:
                logger.warning('Job.enqueue pushed nothing the plugin could capture for job %s; left to NetBox',
                               getattr(job, 'job_id', '?'))
            for captured in pushes:
                defer(job, cls, captured)
        return job

    enqueue.__safejobs_original__ = original
    return enqueue

"""
Every difference between the NetBox (and django-rq) versions the plugin supports, in one place, feature-detected.

Nothing else in the plugin looks at a version number or probes NetBox's internals: it asks this module.
"""

import inspect
import logging

from core.choices import JobStatusChoices

__all__ = (
    'CLAIMABLE_STATES',
    'RUNNING',
    'capture_unsupported_reason',
    'get_push_queue',
    'handle_unsupported_reason',
    'job_queue_name',
    'jobs_module',
    'on_commit',
    'system_job',
)

logger = logging.getLogger('netbox_safejobs.compat')


# The states a job waits in before a worker starts it: a claim moves exactly these to "running".
CLAIMABLE_STATES = (JobStatusChoices.STATUS_PENDING, JobStatusChoices.STATUS_SCHEDULED)
RUNNING = JobStatusChoices.STATUS_RUNNING


def jobs_module():
    """The module that defines ``Job.enqueue`` (``core.models.jobs`` on every supported NetBox)."""
    from core.models import Job

    return inspect.getmodule(Job.enqueue)


def capture_unsupported_reason():
    """
    Why the dispatch patch cannot capture NetBox's push on this NetBox, or ``None`` when it can.

    ``Job.enqueue`` looks its RQ queue up with ``django_rq.get_queue()`` and (from NetBox 4.2.6, #18880) defers the
    push with ``transaction.on_commit()``; both are module globals of the module that defines it. The dispatch patch
    stands in for those two names, in that module only.
    """
    try:
        from netbox.jobs import JobRunner
    except ImportError:
        return 'netbox.jobs.JobRunner does not exist'
    if not isinstance(inspect.getattr_static(JobRunner, 'enqueue', None), classmethod):
        return 'JobRunner.enqueue is not a classmethod'
    module = jobs_module()
    if module is None:
        return 'the module defining Job.enqueue cannot be found'
    for name in ('django_rq', 'transaction'):
        if not hasattr(module, name):
            return f'{module.__name__} has no module global {name!r}'
    if not hasattr(module.django_rq, 'get_queue'):
        return 'django_rq.get_queue does not exist'
    return None


def handle_unsupported_reason():
    """Why the worker guard cannot wrap ``JobRunner.handle`` on this NetBox, or ``None`` when it can."""
    try:
        from netbox.jobs import JobRunner
    except ImportError:
        return 'netbox.jobs.JobRunner does not exist'
    if not isinstance(inspect.getattr_static(JobRunner, 'handle', None), classmethod):
        return 'JobRunner.handle is not a classmethod'
    params = list(inspect.signature(JobRunner.handle).parameters)
    if not params or params[0] != 'job':
        return f'JobRunner.handle has the signature {params}, not (job, *args, **kwargs)'
    return None


_queue_kwargs = None


def get_push_queue(name):
    """
    An RQ queue that pushes when asked, whatever django-rq's ``COMMIT_MODE``: the plugin calls it only after the
    commit, so a further deferral (to a later commit, or to the end of the request) would only lose the error.
    django-rq 3 takes ``autocommit=True``, django-rq 4 ``commit_mode='auto'``.
    """
    global _queue_kwargs
    import django_rq

    if _queue_kwargs is None:
        params = inspect.signature(django_rq.get_queue).parameters
        if 'commit_mode' in params:
            _queue_kwargs = {'commit_mode': 'auto'}
        elif 'autocommit' in params:
            _queue_kwargs = {'autocommit': True}
        else:
            _queue_kwargs = {}
    return django_rq.get_queue(name, **_queue_kwargs)


def job_queue_name(job):
    """The RQ queue of a job: ``Job.queue_name`` where NetBox stores it (4.5+), else NetBox's model mapping."""
    name = getattr(job, 'queue_name', '')
    if name:
        return name
    from utilities.rqworker import get_queue_for_model

    return get_queue_for_model(job.object_type.model if job.object_type_id else None)


_on_commit_robust = None


def on_commit(func, using):
    """``transaction.on_commit`` with ``robust=True`` where Django has it (4.2+): one failing callback must not stop
    the others registered for the same commit."""
    global _on_commit_robust
    from django.db import transaction

    if _on_commit_robust is None:
        _on_commit_robust = 'robust' in inspect.signature(transaction.on_commit).parameters
    if _on_commit_robust:
        transaction.on_commit(func, using=using, robust=True)
    else:
        transaction.on_commit(func, using=using)


def system_job(interval):
    """NetBox's ``system_job`` decorator (4.2+), or ``None`` where it does not exist."""
    try:
        from netbox.jobs import system_job as decorator
    except ImportError:
        return None
    return decorator(interval)

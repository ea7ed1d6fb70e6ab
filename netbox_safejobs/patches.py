"""
The plugin's patches of NetBox (and of RQ's worker): ``install()`` and ``uninstall()``. The only module that changes
classes the plugin does not own.

Installed once from ``PluginConfig.ready()``, which runs in every process (web server, ``rqworker``, management
commands). Each patch wraps the original function with ``functools.wraps`` and calls it; the originals are kept, and
``uninstall()`` puts them back (tests use it). When NetBox or RQ lacks what a patch needs, the patch is not installed,
one line says why, and NetBox runs as it would without it.

- ``dispatch``: ``JobRunner.enqueue`` (commit-bound, stored push), ``Job.delete`` (the RQ task is cancelled after
  the delete commits) and NetBox's ``delete_rq_job`` (a task an operator deleted closes its job);
- ``webhooks`` (with dispatch): the ``get_queue`` that pushes event rules' webhooks, and ``send_webhook`` itself
  (``webhooks.py``);
- ``worker_checks`` (with dispatch): NetBox's "is a worker running?" functions (``worker_checks.py``);
- ``guard``: ``JobRunner.handle`` (claim, look-up with backoff, UPDATE-only run);
- ``worker``: RQ's ``Worker.work`` (the worker loop: relay, heartbeat, liveness; RQ's loop resumed after Redis
  goes away, ``worker_resume.py``) and ``Worker.monitor_work_horse`` (a work horse that died is closed at once);
  behind Redis Sentinel, redis-py's ``SentinelManagedConnection.read_response`` disconnects on an error as every
  other connection does (``sentinel_read_response``).

What each patch needs of NetBox, RQ and redis-py is checked here, before it is installed: every supported release
(NetBox 4.2 – 4.7 and the RQ they install) has it, so the checks guard future releases. What differs between the
supported releases is asked of ``compat``.
"""

import importlib
import inspect
import logging
import sys
from functools import wraps

from . import compat
from .settings import get_settings

__all__ = (
    'capture_unsupported_reason',
    'handle_unsupported_reason',
    'install',
    'installed',
    'jobs_module',
    'sentinel_read_response',
    'uninstall',
)

logger = logging.getLogger('netbox_safejobs.patches')

_ABSENT = object()

# name -> list of (owner, attribute, original value or _ABSENT), restored in reverse order by uninstall()
_installed = {}


def _replace(owner, attribute, value, undo):
    undo.append((owner, attribute, owner.__dict__.get(attribute, _ABSENT) if isinstance(owner, type)
                 else getattr(owner, attribute)))
    setattr(owner, attribute, value)


def jobs_module():
    """
    The module that defines ``Job.enqueue`` (``core.models.jobs`` on every supported NetBox, 4.2 – 4.7): looked up
    rather than named, so that a NetBox moving it makes the dispatch patch say why it is not installed.
    """
    from core.models import Job

    return inspect.getmodule(Job.enqueue)


def capture_unsupported_reason():
    """
    Why the dispatch patch cannot capture NetBox's push on this NetBox, or ``None`` when it can.

    ``Job.enqueue`` looks its RQ queue up with ``django_rq.get_queue()`` and (from NetBox 4.2.6, #18880) defers the
    push with ``transaction.on_commit()``; both are module globals of the module that defines it. The dispatch patch
    stands in for those two names, in that module only. Every supported NetBox (4.2 – 4.7) passes; the check guards
    future releases.
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
    if not hasattr(module, 'django_rq'):
        return f"{module.__name__} has no module global 'django_rq'"
    if not hasattr(module.django_rq, 'get_queue'):
        return 'django_rq.get_queue does not exist'
    return None


def handle_unsupported_reason():
    """
    Why the worker guard cannot wrap ``JobRunner.handle`` on this NetBox, or ``None`` when it can. Every supported
    NetBox (4.2 – 4.7) has the classmethod ``handle(job, *args, **kwargs)``; the check guards future releases.
    """
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


def _rq_task_deleters():
    """
    ``[(module, 'delete_rq_job')]``: NetBox's function that deletes a task from Background Tasks (UI and REST API,
    4.2+), in ``core.utils`` and in each module that imported it by name (``core.views``, ``core.api.views``), so
    that one wrapper sees every call. Empty where NetBox has no such function.
    """
    try:
        modules = [importlib.import_module('core.utils')]
    except ImportError:
        return []
    # The views import it by name when they are first imported (with the URLconf): patched in core.utils before
    # that, they take the wrapper. Where they are imported already, their names are patched too.
    modules += [sys.modules[name] for name in ('core.views', 'core.api.views') if name in sys.modules]
    return [(module, 'delete_rq_job') for module in modules if callable(getattr(module, 'delete_rq_job', None))]


def _rq_worker_class():
    """
    ``(class, None)``: RQ's forking ``Worker``, which ``netbox rqworker`` runs (django-rq's default ``WORKER_CLASS``),
    with the ``work()`` method the worker loop wraps; or ``(None, reason)``. Subclasses (django-rq's, a custom
    ``WORKER_CLASS``) inherit the wrapper. The same on every supported NetBox (4.2 – 4.7) and the RQ it installs
    (2.1 – 2.12).
    """
    try:
        from rq.worker import Worker
    except ImportError:
        return None, 'rq.worker.Worker does not exist'
    if not callable(getattr(Worker, 'work', None)):
        return None, 'rq.worker.Worker has no work() method'
    return Worker, None


def sentinel_read_response():
    """
    ``(class, original)`` when redis-py's ``SentinelManagedConnection.read_response`` keeps a connection whose reply
    was never read, or None. There ``disconnect_on_error`` defaults to False (True in every other ``read_response``;
    redis-py 4.5.5 to at least 8.1, redis/redis-py#4292): when RQ's SIGTERM handler raises ``StopRequested`` in the
    worker's BLPOP, the connection goes back to the pool with the BLPOP still pending on the server. The worker's
    ``register_death()`` then queues behind it and waits for good (no socket timeout), and the next task pushed to
    its queues is popped by that BLPOP and never run. None once redis-py defaults to True.
    """
    try:
        from redis.sentinel import SentinelManagedConnection
    except ImportError:
        return None
    original = SentinelManagedConnection.__dict__.get('read_response')
    if original is None or hasattr(original, '__safejobs_original__'):  # absent, or already ours
        return None
    try:
        parameter = inspect.signature(original).parameters.get('disconnect_on_error')
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is not False:
        return None
    return SentinelManagedConnection, original


def _install_dispatch():
    from core.models import Job
    from netbox.jobs import JobRunner

    from . import dispatch

    reason = capture_unsupported_reason()
    if reason:
        logger.warning('On-commit dispatch not installed: %s. Jobs are dispatched as NetBox does.', reason)
        return
    module = jobs_module()
    undo = []
    original = JobRunner.__dict__['enqueue'].__func__
    _replace(JobRunner, 'enqueue', classmethod(dispatch.wrap_enqueue(original)), undo)
    if 'delete' in Job.__dict__:
        _replace(Job, 'delete', dispatch.wrap_delete(Job.__dict__['delete']), undo)
    deleters = _rq_task_deleters()
    if deleters:
        # One wrapper for the function and every name it was imported under.
        wrapped = dispatch.wrap_delete_task(getattr(deleters[0][0], deleters[0][1]))
        for owner, attribute in deleters:
            _replace(owner, attribute, wrapped, undo)
    # Only the module defining Job.enqueue sees the proxies; both pass everything through outside a capture.
    proxies = {'django_rq': dispatch.RQModuleProxy, 'transaction': dispatch.OnCommitProxy}
    for name in compat.capture_globals(module):
        _replace(module, name, proxies[name](getattr(module, name)), undo)
    _installed['dispatch'] = undo
    _install_webhooks()
    _install_event_actions()
    _install_worker_checks()


def _install_webhooks():
    """Event rules' webhooks through the outbox (``webhooks.py``): with dispatch, in every process."""
    from . import webhooks

    module, reason = compat.webhook_push_module()
    if module is None:
        logger.warning('Webhooks not dispatched on commit: %s. They are pushed as NetBox pushes them.', reason)
        return
    try:
        import extras.webhooks as sender
    except ImportError:
        logger.warning('Webhooks not dispatched on commit: extras.webhooks cannot be imported.')
        return
    undo = []
    _replace(module, 'get_queue', webhooks.wrap_get_queue(module.get_queue), undo)
    # RQ imports the task by its dotted path when a worker runs it: the wrapper claims the webhook's row first.
    _replace(sender, 'send_webhook', webhooks.wrap_send_webhook(sender.send_webhook), undo)
    _installed['webhooks'] = undo


def _install_event_actions():
    """
    The pushes of event-rule actions other plugins register (``event_actions.py``): with dispatch, in every process.
    Where NetBox has no such actions (before 4.7), there is nothing to cover.
    """
    from rq.queue import Queue

    from . import event_actions

    owner, reason = compat.event_rule_action_provider()
    if owner is None:
        logger.debug('No event-rule actions of other plugins to cover: %s', reason)
        return
    undo = []
    getter = owner.__dict__['action_provider'].fget
    _replace(owner, 'action_provider', property(event_actions.wrap_action_provider(getter)), undo)
    # Only inside such an action's enqueue(), in its thread, are RQ's pushes captured; everywhere else they pass.
    # django-rq's queue class overrides enqueue_call to defer it to the commit or the request's end (COMMIT_MODE):
    # captured there first, before any deferral.
    from django_rq.queues import DjangoRQ

    for owner in (Queue, DjangoRQ):
        for method in ('enqueue_call', 'enqueue_at'):
            if method in owner.__dict__:
                _replace(owner, method, event_actions.wrap_queue_push(owner.__dict__[method], method), undo)
    _installed['event_actions'] = undo


def _install_worker_checks():
    """NetBox's "is a worker running?" checks answered from the database too (``worker_checks.py``)."""
    from . import worker_checks

    undo = []
    wrappers = {}
    for owner, name, counts in compat.worker_checks():
        original = getattr(owner, name)
        original = getattr(original, '__safejobs_original__', original)
        if original not in wrappers:
            wrappers[original] = worker_checks.wrap_worker_check(original, counts)
        _replace(owner, name, wrappers[original], undo)
    if undo:
        _installed['worker_checks'] = undo


def _install_guard():
    from netbox.jobs import JobRunner

    from . import guard

    reason = handle_unsupported_reason()
    if reason:
        logger.warning('Worker guard not installed: %s. Jobs are run as NetBox does.', reason)
        return
    undo = []
    original = JobRunner.__dict__['handle'].__func__
    _replace(JobRunner, 'handle', classmethod(guard.wrap_handle(original)), undo)
    _installed['guard'] = undo


def _wrap_work(original):
    from . import worker_loop, worker_resume

    @wraps(original)
    def work(self, *args, **kwargs):
        worker_loop.start(self, guard='guard' in _installed)
        try:
            return worker_resume.work(original, self, *args, **kwargs)
        finally:
            worker_loop.stop()

    return work


def _wrap_monitor(original):
    from . import worker_loop

    @wraps(original)
    def monitor_work_horse(self, job, *args, **kwargs):
        horse_pid = getattr(self, '_horse_pid', 0)
        self._safejobs_horse_end = None
        worker_loop.monitored.add(horse_pid)
        try:
            return original(self, job, *args, **kwargs)
        finally:
            try:
                if self._safejobs_horse_end:
                    worker_loop.horse_ended(self, horse_pid, self._safejobs_horse_end == 'stopped')
            finally:
                worker_loop.monitored.discard(horse_pid)

    return monitor_work_horse


def _wrap_job_failure(original):
    @wraps(original)
    def handle_job_failure(self, job, *args, **kwargs):
        # In the worker, RQ calls this when its work horse ended without finishing the job: stopped from Background
        # Tasks (RQ then forgets _stopped_job_id), or killed. Noted here, acted on once monitor_work_horse returns.
        self._safejobs_horse_end = 'stopped' if getattr(self, '_stopped_job_id', None) == job.id else 'died'
        return original(self, job, *args, **kwargs)

    return handle_job_failure


def _wrap_sentinel_read(original):
    @wraps(original)
    def read_response(self, *args, disconnect_on_error=True, **kwargs):
        # A reply left unread (RQ's StopRequested raised in a BLPOP, a timeout) must not go back to the pool with the
        # connection: the next command would queue behind it or read it as its own. PubSub passes False itself.
        return original(self, *args, disconnect_on_error=disconnect_on_error, **kwargs)

    read_response.__safejobs_original__ = original
    return read_response


def _install_worker():
    worker_class, reason = _rq_worker_class()
    if reason:
        logger.warning('Worker loop not installed: %s. Run `netbox safejobs_recover` from cron for owed pushes '
                       'and stuck jobs.', reason)
        return
    undo = []
    _replace(worker_class, 'work', _wrap_work(worker_class.work), undo)
    if hasattr(worker_class, 'monitor_work_horse') and hasattr(worker_class, 'handle_job_failure'):
        _replace(worker_class, 'monitor_work_horse', _wrap_monitor(worker_class.monitor_work_horse), undo)
        _replace(worker_class, 'handle_job_failure', _wrap_job_failure(worker_class.handle_job_failure), undo)
    # Without those two, the loop's own check of its work horses (liveness.close_dead_horses) closes their jobs.
    sentinel = sentinel_read_response()
    if sentinel:
        # Behind Redis Sentinel, RQ's warm shutdown (SIGTERM) would otherwise hang in register_death() and lose the
        # next task pushed meanwhile (sentinel_read_response).
        _replace(sentinel[0], 'read_response', _wrap_sentinel_read(sentinel[1]), undo)
    _installed['worker'] = undo


def install(dispatch=None, guard=None, worker=None):
    """
    Install the patches switched on in the settings (or as given). Idempotent: a patch already installed is left
    as it is.
    """
    settings = get_settings()
    dispatch = settings.dispatch_on_commit if dispatch is None else dispatch
    guard = settings.worker_guard if guard is None else guard
    worker = settings.worker_loop if worker is None else worker
    if dispatch and 'dispatch' not in _installed:
        _install_dispatch()
    elif dispatch:
        # Each of these goes with dispatch, but has an uninstall() of its own (tests).
        if 'webhooks' not in _installed:
            _install_webhooks()
        if 'event_actions' not in _installed:
            _install_event_actions()
        if 'worker_checks' not in _installed:
            _install_worker_checks()
    if guard and 'guard' not in _installed:
        _install_guard()
    if worker and 'worker' not in _installed:
        _install_worker()
    return installed()


def uninstall(name=None):
    """Put the originals back (all patches, or the one named)."""
    for key in [name] if name else list(_installed):
        for owner, attribute, original in reversed(_installed.pop(key, [])):
            if original is _ABSENT:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)


def installed():
    """
    The names of the patches in place: a subset of {'dispatch', 'webhooks', 'event_actions', 'worker_checks', 'guard',
    'worker'}.
    """
    return set(_installed)

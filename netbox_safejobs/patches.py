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
  other connection does (``compat.sentinel_read_response``).
"""

import logging
from functools import wraps

from . import compat
from .settings import get_settings

__all__ = (
    'install',
    'installed',
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


def _install_dispatch():
    from core.models import Job
    from netbox.jobs import JobRunner

    from . import dispatch

    reason = compat.capture_unsupported_reason()
    if reason:
        logger.warning('On-commit dispatch not installed: %s. Jobs are dispatched as NetBox does.', reason)
        return
    module = compat.jobs_module()
    undo = []
    original = JobRunner.__dict__['enqueue'].__func__
    _replace(JobRunner, 'enqueue', classmethod(dispatch.wrap_enqueue(original)), undo)
    if 'delete' in Job.__dict__:
        _replace(Job, 'delete', dispatch.wrap_delete(Job.__dict__['delete']), undo)
    deleters = compat.rq_task_deleters()
    if deleters:
        # One wrapper for the function and every name it was imported under.
        wrapped = dispatch.wrap_delete_task(getattr(deleters[0][0], deleters[0][1]))
        for owner, attribute in deleters:
            _replace(owner, attribute, wrapped, undo)
    # Only the module defining Job.enqueue sees the proxies; both pass everything through outside a capture.
    proxies = {'django_rq': dispatch.RQModuleProxy, 'transaction': dispatch.OnCommitProxy}
    for name in compat.capture_globals():
        _replace(module, name, proxies[name](getattr(module, name)), undo)
    _installed['dispatch'] = undo
    _install_webhooks()
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

    reason = compat.handle_unsupported_reason()
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
    worker_class, reason = compat.rq_worker_class()
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
    sentinel = compat.sentinel_read_response()
    if sentinel:
        # Behind Redis Sentinel, RQ's warm shutdown (SIGTERM) would otherwise hang in register_death() and lose the
        # next task pushed meanwhile (compat.sentinel_read_response).
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
    """The names of the patches in place: a subset of {'dispatch', 'webhooks', 'worker_checks', 'guard', 'worker'}."""
    return set(_installed)

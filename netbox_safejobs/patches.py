"""
The plugin's patches of NetBox: ``install()`` and ``uninstall()``. The only module that changes NetBox's classes.

Installed once from ``PluginConfig.ready()``, which runs in every process (web server, ``rqworker``, management
commands). Each patch wraps NetBox's function with ``functools.wraps`` and calls it; the originals are kept, and
``uninstall()`` puts them back (tests use it). When NetBox lacks what a patch needs, the patch is not installed,
one line says why, and NetBox runs as it would without the plugin.
"""

import logging

from . import compat
from .settings import get_settings

__all__ = (
    'install',
    'installed',
    'uninstall',
)

logger = logging.getLogger('netbox_safejobs.patches')

# name -> list of (owner, attribute, original value), restored in reverse order by uninstall()
_installed = {}


def _replace(owner, attribute, value, undo):
    undo.append((owner, attribute, owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)))
    setattr(owner, attribute, value)


def _install_dispatch():
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
    # Only the module defining Job.enqueue sees the proxies; both pass everything through outside a capture.
    proxies = {'django_rq': dispatch.RQModuleProxy, 'transaction': dispatch.OnCommitProxy}
    for name in compat.capture_globals():
        _replace(module, name, proxies[name](getattr(module, name)), undo)
    _installed['dispatch'] = undo


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


def install(dispatch=None, guard=None):
    """
    Install the patches switched on in the settings (or as given). Idempotent: a patch already installed is left
    as it is.
    """
    settings = get_settings()
    dispatch = settings.dispatch_on_commit if dispatch is None else dispatch
    guard = settings.worker_guard if guard is None else guard
    if dispatch and 'dispatch' not in _installed:
        _install_dispatch()
    if guard and 'guard' not in _installed:
        _install_guard()
    return installed()


def uninstall(name=None):
    """Put NetBox's originals back (all patches, or the one named)."""
    for key in [name] if name else list(_installed):
        for owner, attribute, original in reversed(_installed.pop(key, [])):
            setattr(owner, attribute, original)


def installed():
    """The names of the patches in place: a subset of {'dispatch', 'guard'}."""
    return set(_installed)

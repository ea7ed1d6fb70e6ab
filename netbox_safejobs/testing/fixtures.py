"""
Job rows, unsaved jobs and pushes made by hand, on every supported NetBox; the plugin switched on and off in this
process; NetBox management commands in a new process; a database connection terminated from outside.
"""

import importlib.util
import os
import sys
import uuid

from netbox_safejobs import compat, patches
from netbox_safejobs.queues import get_push_queue

__all__ = (
    'create_job',
    'installed_plugins',
    'netbox_command',
    'push_directly',
    'second_connection',
    'set_mode',
    'stock_push_on_commit',
    'terminate_connection',
    'unsaved_job',
)


def unsaved_job(name, queue_name='default', **fields):
    """A pending Job with a new UUID, not saved yet; ``queue_name`` is stored where this NetBox's Job has it (4.5+)."""
    from core.models import Job

    fields.setdefault('status', 'pending')
    return Job(name=name, job_id=uuid.uuid4(), **fields, **compat.job_field_values(queue_name=queue_name))


def create_job(name, queue_name='default', **fields):
    """``unsaved_job()``, saved."""
    job = unsaved_job(name, queue_name, **fields)
    job.save(force_insert=True)
    return job


def push_directly(job, runner, rq_job_id=None):
    """
    Push a task for ``job`` the way NetBox <= 4.2.5 did (and stock NetBox, bypassing the plugin's dispatch): at
    once, whatever the transaction, to the job's queue. ``rq_job_id`` (default: the job's UUID) makes a second task.
    """
    return get_push_queue(compat.rq_queue_name(job)).enqueue(
        runner.handle, job_id=rq_job_id or str(job.job_id), job=job,
    )


def set_mode(mode, worker=True):
    """``stock``: NetBox's own code paths in this process (every patch uninstalled); ``plugin``: the patches on."""
    from netbox_safejobs import patches

    patches.uninstall()
    if mode == 'plugin':
        patches.install(dispatch=True, guard=True, worker=worker)


def second_connection(connection=None):
    """A new psycopg connection (autocommit) to the database of Django's ``connection``, to act on it from outside."""
    import psycopg

    if connection is None:
        from django.db import connection
    s = connection.settings_dict
    return psycopg.connect(host=s['HOST'] or None, port=s['PORT'] or None, user=s['USER'], dbname=s['NAME'],
                           password=s.get('PASSWORD') or None, autocommit=True)


def terminate_connection(connection=None):
    """
    End the PostgreSQL backend of Django's ``connection`` from a second connection (``pg_terminate_backend``), as a
    failover or an administrator would: its next query raises ``OperationalError``.
    """
    if connection is None:
        from django.db import connection
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with second_connection(connection) as other:
        other.execute('SELECT pg_terminate_backend(%s)', [pid])


def stock_push_on_commit():
    """
    True where NetBox's own ``Job.enqueue`` pushes from ``transaction.on_commit()`` (4.2.6+, #18880); False on 4.2.0 -
    4.2.5, which push at once, inside the caller's transaction (so a worker can take a job whose row is not committed
    yet, or never will be).
    """
    return 'transaction' in compat.capture_globals(patches.jobs_module())


def installed_plugins():
    """The names of the installed plugins: ``registry['plugins']['installed']`` (4.3+), else ``settings.PLUGINS``."""
    from django.conf import settings
    from netbox.registry import registry

    installed = registry['plugins'].get('installed')
    if installed is not None:
        return list(installed)
    return [name.rsplit('.', 1)[-1] for name in settings.PLUGINS]


def netbox_command(*args):
    """
    The argv that runs ``netbox <args>`` in a new process with this interpreter: ``python -m netbox`` where NetBox is
    a package with a ``__main__`` (4.6.6+, and every pip-installed NetBox), else the source checkout's ``manage.py``
    (next to the ``netbox`` settings package).
    """
    from django.conf import settings

    if importlib.util.find_spec('netbox.__main__') is not None:
        return [sys.executable, '-m', 'netbox', *args]
    return [sys.executable, os.path.join(settings.BASE_DIR, 'manage.py'), *args]

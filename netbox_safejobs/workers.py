"""
This process's identity as an ``rqworker`` running the plugin, and its heartbeat row (``WorkerHeartbeat``).

Set by the worker loop when an ``rqworker`` starts (``worker_loop.py``) and inherited by its work horses, which
fork from it: the guard stamps each lease with it, so that a lease lives exactly as long as its worker keeps
heartbeating. Processes that are not workers (the web server, ``netbox runscript``, management commands) have none,
and their leases (``immediate`` jobs) are never closed by the liveness check.
"""

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass

from django.db import connections

from .version import __version__

__all__ = (
    'HOST',
    'LeaseHeartbeat',
    'WorkerIdentity',
    'beat',
    'current',
    'forget',
    'set_current',
)

logger = logging.getLogger('netbox_safejobs.workers')

# This host's name as every table of the plugin stores it (heartbeats, leases, events): at most 255 characters.
HOST = socket.gethostname()[:255]


@dataclass(frozen=True)
class WorkerIdentity:
    id: uuid.UUID
    name: str
    host: str
    pid: int
    guard: bool = True
    # The RQ queues it listens on: NetBox's "is a worker running?" checks ask for one (``worker_checks.py``).
    queues: tuple = ()


_current = None


def current():
    """This process's worker identity (also in its work horses), or ``None`` outside an rqworker."""
    return _current


def set_current(name, guard=True, queues=()):
    """Give this process a new worker identity (the worker loop, at start-up)."""
    global _current
    _current = WorkerIdentity(id=uuid.uuid4(), name=(name or '')[:255], host=HOST, pid=os.getpid(), guard=guard,
                              queues=tuple(queues))
    return _current


def _table():
    from .models import WorkerHeartbeat

    return WorkerHeartbeat._meta.db_table


def beat(identity, using='default'):
    """Write or refresh the worker's heartbeat row with the database's clock: one statement."""
    from django.utils import timezone

    table = _table()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {table} (id, name, host, pid, version, started, seen, host_clock, guard, queues) '
            f'VALUES (%s, %s, %s, %s, %s, clock_timestamp(), clock_timestamp(), %s, %s, %s) '
            f'ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen, host_clock = EXCLUDED.host_clock',
            [identity.id, identity.name, identity.host, identity.pid, __version__[:50], timezone.now(),
             identity.guard, ' '.join(identity.queues)[:1000]],
        )


def forget(identity, using='default'):
    """Remove the worker's heartbeat row (a clean stop: its work horse has ended and released its lease)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f'DELETE FROM {_table()} WHERE id = %s', [identity.id])


class LeaseHeartbeat(threading.Thread):
    """
    In a work horse, while its job runs: refresh the lease's own ``heartbeat`` every ``interval`` seconds, so that a
    job outlives a worker that died before its work horse (a worker killed alone leaves its work horse running).
    Waits one interval before its first beat: a job shorter than that costs nothing, not even a connection.
    """

    def __init__(self, job_pk, token, interval, using='default', column='job_id'):
        # ``column``: the lease's row by its job (``job_id``), or, for a task without a Job (a webhook), by its ``id``.
        super().__init__(name='netbox-safejobs-lease', daemon=True)
        self.job_pk, self.token, self.interval, self.using = job_pk, token, interval, using
        self.column = {'job_id': 'job_id', 'id': 'id'}[column]
        self._done = threading.Event()

    def run(self):
        from .models import JobDispatch

        sql = (f'UPDATE {JobDispatch._meta.db_table} SET heartbeat = clock_timestamp() '
               f'WHERE {self.column} = %s AND token = %s')
        beat = False
        try:
            while not self._done.wait(self.interval):
                beat = True
                try:
                    with connections[self.using].cursor() as cursor:
                        cursor.execute(sql, [self.job_pk, self.token])
                except Exception as e:
                    logger.warning('lease heartbeat of job %s failed (%s); trying again', self.job_pk, e)
                    connections[self.using].close()
        finally:
            # A job shorter than one interval never beat: this thread has no connection to close (and building
            # Django's per-thread connection objects only to close them costs every short job).
            if beat:
                connections.close_all()

    def stop(self):
        self._done.set()
        if self.is_alive():
            self.join(timeout=2)

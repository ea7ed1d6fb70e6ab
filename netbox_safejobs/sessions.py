"""
One PostgreSQL session per process: what an ``rqworker`` and the work horses it forks may do with database
connections.

RQ forks a work horse for every task. A connection open in the forking thread at that moment is copied into the horse:
one PostgreSQL session (one TLS stream where the server has ``ssl = on``, as Debian's and Ubuntu's packages do) is then
driven by two processes. Their messages interleave; a horse killed inside a transaction leaves the worker's session in
that transaction ("can't change 'autocommit' now"); a horse that closes what it inherited terminates the worker's
session. Stock NetBox meets none of this only because django-rq closes every connection before ``Worker.work()`` and
nothing of NetBox queries the database from the worker's main thread afterwards. The plugin does (the heartbeat at
start-up, the close of a dead horse's job), so it keeps two rules, as the fork hygiene of django-rq's ``rqworker`` and
of RQ's ``fork_work_horse`` intends:

- **a horse never uses, nor closes, a session it inherited**: right after the fork (``os.register_at_fork``), the
  horse forgets every connection its forking thread held, without closing it, and keeps a reference to it until it
  exits (psycopg does not finalise a connection in a process other than the one that opened it, and RQ ends a horse
  with ``os._exit``). Its first query opens the horse's own session;
- **the worker's main thread holds no session across a fork**: its own database work (``run_in_own_session``) runs in
  a short-lived thread whose connections are closed before it returns, so the worker never uses a session a horse
  touched either.
"""

import logging
import os
import threading

from django.db import connections

__all__ = (
    'forget_inherited_connections',
    'install_fork_hook',
    'run_in_own_session',
)

logger = logging.getLogger('netbox_safejobs.sessions')

# Connections a work horse inherited from its worker: referenced until the horse exits, never used or closed.
_inherited = []

_hook = {'registered': False, 'enabled': False}


def forget_inherited_connections():
    """
    In a process just forked: forget the database connections the forking thread held, without closing them. Django
    opens a new session on the next query. Returns how many were forgotten.
    """
    forgotten = 0
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        _inherited.append(connection.connection)
        connection.connection = None
        forgotten += 1
    return forgotten


def _after_fork_in_child():
    if _hook['enabled']:
        try:
            forget_inherited_connections()
        except Exception:  # never let a fork fail because of the plugin
            logger.exception('inherited database connections not forgotten in work horse %s', os.getpid())


def install_fork_hook(enabled=True):
    """
    Make every process this one forks from now on forget the connections it inherits (in an ``rqworker``, its work
    horses). ``os.register_at_fork`` cannot be undone: the hook is registered once and switched by ``enabled``.
    """
    if not _hook['registered'] and hasattr(os, 'register_at_fork'):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _hook['registered'] = True
    _hook['enabled'] = enabled and _hook['registered']
    return _hook['enabled']


def run_in_own_session(func, *args, **kwargs):
    """
    ``func(*args, **kwargs)`` in a thread of its own, with its own database session, closed before this returns; its
    result, or its exception raised here. For the database work of a worker's main thread, the thread that forks.
    """
    outcome = {}

    def target():
        try:
            outcome['result'] = func(*args, **kwargs)
        except BaseException as e:
            outcome['error'] = e
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name='netbox-safejobs-session', daemon=True)
    thread.start()
    thread.join()
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('result')

"""
A log of the SQL statements NetBox processes send, for the per-job profile of the throughput scenario (harness
``--profile``): one line per statement, appended to the file named by ``SAFEJOBS_STATEMENT_LOG``, with the process,
its parent, the thread, the statement's verb and table, and the time to its reply. Installed in every process of a
profiled run alike, stock and plugin (``statement_hook/sitecustomize.py`` for the workers and their work horses,
``install()`` in the harness), so that the difference between the two is the plugin's.

Only for profiling: it costs a write per statement, so a profiled run is never a timed one.
"""

import os
import re
import threading
import time

__all__ = (
    'LOG_VARIABLE',
    'horse_profile',
    'install',
    'profile_work_horses',
    'read',
)

LOG_VARIABLE = 'SAFEJOBS_STATEMENT_LOG'

_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+"?([a-z_][a-z0-9_]*)"?', re.IGNORECASE)


def _describe(sql):
    sql = sql.lstrip()
    verb = sql.split(None, 1)[0].upper() if sql else '?'
    match = _TABLE.search(sql)
    return verb, (match.group(1) if match else '-')


# Where this process logs its statements; ``None``: nowhere (the wrapper stays, and does nothing).
_path = None


def _log_statement(execute, sql, params, many, context):
    if _path is None:
        return execute(sql, params, many, context)
    start = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        elapsed = (time.perf_counter() - start) * 1e6
        verb, table = _describe(sql if isinstance(sql, str) else str(sql))
        line = (f'{os.getpid()} {os.getppid()} {threading.current_thread().name.replace(" ", "_")} {verb} '
                f'{table} {elapsed:.0f}\n')
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _add_wrapper(sender=None, connection=None, **kwargs):
    if _log_statement not in connection.execute_wrappers:
        connection.execute_wrappers.append(_log_statement)


def install(path):
    """
    Log every statement of this process's database connections, open or opened later, to ``path`` from now on
    (``None``: stop logging). Idempotent.
    """
    global _path
    from django.conf import settings
    from django.db import connections
    from django.db.backends.signals import connection_created

    _path = path
    connection_created.connect(_add_wrapper, dispatch_uid='safejobs-statement-log')
    if settings.configured:  # not yet in a process starting up (sitecustomize): every connection is opened later
        for connection in connections.all():
            _add_wrapper(connection=connection)


def read(path, offset=0):
    """The lines logged from ``offset`` on: ``(pid, ppid, thread, verb, table, microseconds)`` each."""
    rows = []
    with open(path, 'rb') as log:
        log.seek(offset)
        for line in log.read().decode(errors='replace').splitlines():
            parts = line.split()
            if len(parts) == 6:
                rows.append((int(parts[0]), int(parts[1]), parts[2], parts[3], parts[4], int(parts[5])))
    return rows


def profile_work_horses(directory):
    """
    In an rqworker: every process it forks (its work horses) profiles itself with cProfile from the fork to its
    ``os._exit()`` and writes ``<directory>/<pid>.prof``. RQ ends a work horse with ``os._exit``, which runs no
    ``atexit`` handler: the dump is made by the horse's own ``os._exit``, replaced in the child only.
    """
    import cProfile

    real_exit = os._exit

    def start_profile():
        profiler = cProfile.Profile()

        def exit_with_dump(code):
            profiler.disable()
            try:
                profiler.dump_stats(os.path.join(directory, f'{os.getpid()}.prof'))
            finally:
                real_exit(code)

        os._exit = exit_with_dump
        profiler.enable()

    os.register_at_fork(after_in_child=start_profile)


def horse_profile(directory, jobs, limit=40):
    """
    The cProfile dumps of ``profile_work_horses`` merged: ``{function: (calls per job, own ms per job, cumulative ms
    per job)}`` of the ``limit`` functions with the most cumulative time.
    """
    import glob
    import pstats

    files = sorted(glob.glob(os.path.join(directory, '*.prof')))
    if not files:
        return {}
    stats = pstats.Stats(*files)
    rows = []
    for (filename, line, name), (_calls, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        where = filename.split('site-packages/')[-1].split('/work/main/')[-1]
        rows.append((f'{where}:{line}({name})', ncalls / jobs, tottime * 1e3 / jobs, cumtime * 1e3 / jobs))
    rows.sort(key=lambda row: -row[3])
    return {key: (round(calls, 2), round(own, 3), round(cumulative, 3)) for key, calls, own, cumulative in rows[:limit]}

"""
Shared test bases: real PostgreSQL, real Redis, real ``netbox rqworker`` processes.

Tests that need another process to see their data use ``SafeJobsTransactionTestCase`` (Django's ``TestCase`` never
commits, so on-commit hooks would never fire and a worker would see nothing). Workers are started as subprocesses
pointed at the test database, and stopped by PID.
"""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from django.db import connection, connections
from django.test import TransactionTestCase
from django_rq import get_connection

from netbox_safejobs import dispatch, patches
from netbox_safejobs.testing.fixtures import netbox_command
from netbox_safejobs.testing.processes import RedisServer, child_pids, kill_pids, stop_process_group
from netbox_safejobs.testing.queues import override_rq_queues, queues_on

__all__ = (
    'EmptiedTransactionTestCase',
    'PrivateRedisTestCase',
    'SafeJobsTransactionTestCase',
    'Worker',
    'netbox_command',
    'post_migrate_fingerprint',
    'truncate_filled_tables',
    'worker_env',
)

QUEUES = ('high', 'default', 'low')


def worker_env(plugins_config=None, **extra):
    """The environment of a NetBox subprocess that uses this test run's database and Redis databases."""
    env = dict(os.environ)
    env['SAFEJOBS_DB_NAME'] = connection.settings_dict['NAME']
    env['SAFEJOBS_DEBUG'] = '0'
    # Workers must not keep idle connections to the test database open after they exit.
    env['SAFEJOBS_CONN_MAX_AGE'] = '0'
    if plugins_config is not None:
        env['SAFEJOBS_PLUGINS_CONFIG'] = repr(plugins_config)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker:
    """
    A ``netbox rqworker`` subprocess (its own process group, so it and its work horse are stopped together), or
    another worker ``command`` (``('rqworker-pool', '--num-workers', '2')``).
    """

    def __init__(self, *queues, burst=True, plugins_config=None, env=None, command=('rqworker',)):
        argv = netbox_command(*command, *(queues or QUEUES))
        if burst:
            argv.append('--burst')
        self.process = subprocess.Popen(
            argv, env=env or worker_env(plugins_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True,
        )
        self.output = ''

    @property
    def pid(self):
        return self.process.pid

    def wait(self, timeout=120):
        try:
            self.output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'worker did not finish within {timeout}s:\n{self.output}')
        return self.process.returncode

    def kill(self, sig=signal.SIGKILL):
        """``sig`` to the worker and its work horse (default: SIGKILL, a crash); SIGKILL after 30 s."""
        # RQ's work horse leaves the worker's process group (``os.setpgrp()`` after the fork) and holds the worker's
        # output pipe: a crash kills it too, or reading the worker's output would wait for the horse's job to end.
        if sig == signal.SIGKILL:
            kill_pids(self.children())
        self.output += stop_process_group([self.process], grace=30, sig=sig)[self.process] or ''

    def children(self):
        """PIDs of the worker's child processes (RQ's work horse while a job runs)."""
        return child_pids(self.pid)


def post_migrate_fingerprint(conn):
    """A digest of every row of those POST_MIGRATE_TABLES this NetBox has."""
    existing = set(conn.introspection.table_names())
    tables = [table for table in POST_MIGRATE_TABLES if table in existing]
    quote = conn.ops.quote_name
    with conn.cursor() as cursor:
        cursor.execute('SELECT ' + ', '.join(
            f"(SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {quote(table)} t)" for table in tables
        ))
        return cursor.fetchone()


def truncate_filled_tables(conn, keep=()):
    """
    Truncate, in one statement, every table of Django's models that holds a row, but those in ``keep`` (CASCADE takes
    the tables referring to them, empty ones included, as PostgreSQL requires).
    """
    tables = sorted(set(conn.introspection.django_table_names(only_existing=True, include_views=False)) - set(keep))
    if not tables:
        return
    quote = conn.ops.quote_name
    probe = ' UNION ALL '.join(f'SELECT %s WHERE EXISTS (SELECT 1 FROM {quote(table)})' for table in tables)
    with conn.cursor() as cursor:
        cursor.execute(probe, tables)
        filled = [row[0] for row in cursor.fetchall()]
        if filled:
            cursor.execute(f'TRUNCATE {", ".join(quote(table) for table in filled)} CASCADE')


def run_burst_worker(*queues, plugins_config=None, timeout=120):
    worker = Worker(*queues, burst=True, plugins_config=plugins_config)
    code = worker.wait(timeout=timeout)
    if code != 0:
        raise AssertionError(f'rqworker exited with {code}:\n{worker.output}')
    return worker.output


# What Django's flush has post_migrate write again after emptying every table: content types, their permissions and
# NetBox's object types (core.signals.update_object_types saves one row per model, several hundred of them).
POST_MIGRATE_TABLES = ('django_content_type', 'auth_permission', 'core_objecttype')


class EmptiedTransactionTestCase(TransactionTestCase):
    """
    Django's ``TransactionTestCase``, leaving the database between tests as Django's flush does, faster: Django
    truncates every table, then post_migrate writes the content types, permissions and object types again (most of
    a second per test on NetBox: docs/development.md); here only the tables that hold rows are truncated, and those
    three are kept as they are, unless the test changed them (then Django's own flush runs).
    """

    _post_migrate_state = {}  # database alias -> digest of the three tables, taken before the first test

    @classmethod
    def setUpClass(cls):
        for alias in cls._databases_names(include_mirrors=False):
            if alias not in cls._post_migrate_state:
                cls._post_migrate_state[alias] = post_migrate_fingerprint(connections[alias])
        super().setUpClass()

    def _fixture_teardown(self):
        for alias in self._databases_names(include_mirrors=False):
            conn = connections[alias]
            if post_migrate_fingerprint(conn) == self._post_migrate_state[alias]:
                truncate_filled_tables(conn, keep=POST_MIGRATE_TABLES)
            else:
                # The test changed what post_migrate writes: Django's flush, and what it leaves is the new reference.
                super()._fixture_teardown()
                self._post_migrate_state[alias] = post_migrate_fingerprint(conn)


class SafeJobsTransactionTestCase(EmptiedTransactionTestCase):
    """Commits for real; starts every test with empty RQ queues in this run's Redis database and the patches on."""

    def setUp(self):
        super().setUp()
        self.redis = get_connection('default')
        self.redis.flushdb()
        patches.install()
        # A push that failed at the end of the last test holds back none of this one's.
        dispatch.forget_push_failure()

    def tearDown(self):
        self.redis.flushdb()
        super().tearDown()

    def create_site(self, name):
        """A site created through the REST API, as a user does (the client logged in): returns the HTTP status."""
        import json

        return self.client.post('/api/dcim/sites/', data=json.dumps({'name': name, 'slug': name}),
                                content_type='application/json').status_code

    def site_created_and_rolled_back(self, user, before_rollback):
        """
        A site created in a request's event tracking, inside a transaction that then rolls back (a script or plugin
        wrapping NetBox's code): the events are flushed at event tracking's exit, still inside the transaction, and
        ``before_rollback()`` looks at what that stored before it all rolls back.
        """
        import uuid

        from dcim.models import Site
        from django.db import transaction
        from netbox.context_managers import event_tracking

        request = self.client.get('/api/').wsgi_request
        request.user = user
        request.id = uuid.uuid4()

        class Rollback(Exception):
            pass

        with self.assertRaises(Rollback), transaction.atomic():
            with event_tracking(request):
                Site.objects.create(name='never', slug='never')
            before_rollback()
            raise Rollback

    def wait_for(self, predicate, timeout=30, interval=0.1, message='condition'):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        raise AssertionError(f'{message} not reached within {timeout}s')


class PrivateRedisTestCase(SafeJobsTransactionTestCase):
    """
    A private Redis server (``self.server``) that a test stops, flushes and starts again, every RQ queue of this
    process on it, and real workers on it (``self.worker()``, each a ``WORKER_COMMAND`` with ``CONFIG``).
    """

    CONFIG = {'relay_interval': 1.0}
    WORKER_COMMAND = ('rqworker',)

    def setUp(self):
        super().setUp()
        self.workdir = Path(tempfile.mkdtemp(prefix='safejobs-test-'))
        self.server = RedisServer(self.workdir)
        self.server.start()
        queues = override_rq_queues(queues_on(self.server.port))
        queues.__enter__()
        self.addCleanup(self.server.stop)
        self.addCleanup(queues.__exit__, None, None, None)

    def worker(self, **extra):
        """A long-running worker on the private Redis; ``extra``: more environment (``SAFEJOBS_DB_PORT``...)."""
        env = worker_env(self.CONFIG, SAFEJOBS_REDIS_PORT=self.server.port, SAFEJOBS_REDIS_TASKS_DB=0, **extra)
        worker = Worker(burst=False, env=env, command=self.WORKER_COMMAND)
        self.addCleanup(worker.kill)
        return worker

    def completed(self, jobs):
        from core.models import Job

        return Job.objects.filter(pk__in=[job.pk for job in jobs], status='completed').count() == len(jobs)


# Heartbeats every second and a stuck bound of 10 s, so that a dead worker is seen within a test's patience.
LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10, 'relay_interval': 0.5}


class RunningJobTestCase(SafeJobsTransactionTestCase):
    """Long-running workers on this run's Redis, and a job seen running in one of them (its lease and work horse)."""

    def setUp(self):
        super().setUp()
        self.workers = []

    def tearDown(self):
        # Before the database is emptied: a work horse still inside its job would hold the flush's TRUNCATE until
        # the job ends (minutes, for the long jobs these tests stop).
        for worker in self.workers:
            worker.kill()
        super().tearDown()

    def start_worker(self, config=LIVELY):
        worker = Worker('default', burst=False, env=worker_env(config))
        self.workers.append(worker)
        return worker

    def wait_running(self, job, worker):
        from netbox_safejobs.models import JobDispatch, WorkerHeartbeat

        from .jobs import run_count

        self.wait_for(lambda: run_count(job.job_id) == 1, timeout=90, message='run() entered')
        self.wait_for(lambda: worker.children(), timeout=30, message='work horse')
        lease = JobDispatch.objects.get(job=job)
        self.assertEqual(lease.state, 'claimed')
        self.assertIsNotNone(lease.token)
        self.assertTrue(WorkerHeartbeat.objects.filter(id=lease.worker).exists(), 'lease without a live worker')
        return lease

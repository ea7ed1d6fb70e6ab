"""Job runners used by the tests. Importable in ``rqworker`` subprocesses (the repository root is on PYTHONPATH)."""

import time

from django.db import connection, transaction
from django_rq import get_connection
from netbox.jobs import JobRunner

__all__ = (
    'ACTIONS_KEY',
    'CountingJob',
    'FailingJob',
    'SESSIONS_KEY',
    'SessionJob',
    'UnsavableResultJob',
    'record_action',
    'run_count',
)

COUNTER_KEY = 'safejobs-tests:runs:{}'

# The PostgreSQL session each SessionJob ran in, in order ("<pg_backend_pid()> tls|plain"); the jobs now holding a
# transaction.
SESSIONS_KEY = 'safejobs-tests:sessions'
HOLDING_KEY = 'safejobs-tests:holding'


def run_count(job_uuid):
    """How many times ``run()`` was entered for a job, counted in Redis (independent of the database)."""
    value = get_connection('default').get(COUNTER_KEY.format(job_uuid))
    return int(value or 0)


class CountingJob(JobRunner):
    """Counts its runs in Redis; optionally sleeps (to be killed mid-run) or writes a marker into the job data."""

    class Meta:
        name = 'Counting job'

    def run(self, sleep=0, **kwargs):
        get_connection('default').incr(COUNTER_KEY.format(self.job.job_id))
        if sleep:
            time.sleep(sleep)
        self.job.data = {'ran': True}


class FailingJob(JobRunner):
    class Meta:
        name = 'Failing job'

    def run(self, **kwargs):
        get_connection('default').incr(COUNTER_KEY.format(self.job.job_id))
        raise RuntimeError('boom')


class SessionJob(JobRunner):
    """
    Records the PostgreSQL session its work horse queries in; with ``hold``, then writes a tag inside a transaction
    and sleeps there (to be killed with its transaction open).
    """

    class Meta:
        name = 'Session job'

    def run(self, hold=0, **kwargs):
        from extras.models import Tag

        redis = get_connection('default')
        with connection.cursor() as cursor:
            cursor.execute('SELECT pg_backend_pid(), coalesce((SELECT ssl FROM pg_stat_ssl '
                           'WHERE pid = pg_backend_pid()), false)')
            pid, tls = cursor.fetchone()
            redis.rpush(SESSIONS_KEY, f'{pid} {"tls" if tls else "plain"}')
        if hold:
            with transaction.atomic():
                Tag.objects.create(name=f'held {self.job.job_id}', slug=f'held-{self.job.job_id}')
                redis.rpush(HOLDING_KEY, str(self.job.job_id))
                time.sleep(hold)


class UnsavableResultJob(JobRunner):
    """Leaves in ``job.data`` what JSON cannot hold: NetBox's ``terminate()`` fails, and so does its second one."""

    class Meta:
        name = 'Unsavable result job'

    def run(self, **kwargs):
        get_connection('default').incr(COUNTER_KEY.format(self.job.job_id))
        self.job.data = {'result': object()}


ACTIONS_KEY = 'safejobs-tests:actions'


def record_action(name):
    """The task a test's event-rule action pushes to RQ itself: records ``name`` in Redis when a worker runs it."""
    get_connection('default').rpush(ACTIONS_KEY, name)

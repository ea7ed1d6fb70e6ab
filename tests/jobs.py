"""Job runners used by the tests. Importable in ``rqworker`` subprocesses (the repository root is on PYTHONPATH)."""

import time

from django_rq import get_connection
from netbox.jobs import JobRunner

__all__ = (
    'CountingJob',
    'FailingJob',
    'run_count',
)

COUNTER_KEY = 'safejobs-tests:runs:{}'


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

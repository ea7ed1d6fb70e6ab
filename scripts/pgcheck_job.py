"""
The job `scripts/dev selfcheck-private-pg` has an RQ worker run against its private PostgreSQL.

Imported by that worker (scripts/ is put on its PYTHONPATH); it records which server the worker's queries reached and
whether NetBox's ICU collation is there.
"""

import json
import time

from django.db import connection
from netbox.jobs import JobRunner

__all__ = ('PrivatePostgresCheckJob', 'enqueue_and_wait')


class PrivatePostgresCheckJob(JobRunner):
    class Meta:
        name = 'Private PostgreSQL self-check'

    def run(self, *args, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('port')::int, current_database(), "
                "EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'natural_sort' AND collprovider = 'i')"
            )
            port, database, natural_sort_icu = cursor.fetchone()
        self.job.data = {'port': port, 'database': database, 'natural_sort_icu': natural_sort_icu}


def enqueue_and_wait(timeout):
    """
    Enqueue the job, wait up to ``timeout`` seconds for a worker to end it, and print its outcome as one line,
    ``RESULT`` and a JSON object (run by `netbox shell --command`).
    """
    job = PrivatePostgresCheckJob.enqueue()
    deadline = time.monotonic() + timeout
    while job.status not in ('completed', 'errored', 'failed') and time.monotonic() < deadline:
        time.sleep(0.3)
        job.refresh_from_db()
    print('RESULT ' + json.dumps({'status': job.status, 'data': job.data, 'error': job.error}))

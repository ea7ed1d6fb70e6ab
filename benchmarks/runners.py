"""Job runners used by the benchmarks (importable by rqworker processes: the repository root is on PYTHONPATH)."""

import os
import time

from netbox.jobs import JobRunner

__all__ = (
    'HarnessJob',
    'TrivialJob',
)

RUNS_FILE_VARIABLE = 'SAFEJOBS_HARNESS_RUNS'


class TrivialJob(JobRunner):
    """Does nothing, so that what is measured is the job machinery itself."""

    class Meta:
        name = 'safejobs-benchmark'

    def run(self, *args, **kwargs):
        pass


class HarnessJob(JobRunner):
    """
    Records each entry into ``run()`` as one line (job UUID, time, process id) appended to the file named by
    SAFEJOBS_HARNESS_RUNS, and each end of it to that file's ``.ends``: outside PostgreSQL and Redis, so that
    duplicate runs are counted even when either fails.
    """

    class Meta:
        name = 'safejobs-harness'

    def run(self, sleep=0, session=False, hold=0, **kwargs):
        path = os.environ.get(RUNS_FILE_VARIABLE)
        if path:
            _append(path, f'{self.job.job_id} {time.time():.6f} {os.getpid()}')
            if session:
                # The PostgreSQL session this work horse queries in, and whether it is a TLS one.
                from django.db import connection

                with connection.cursor() as cursor:
                    cursor.execute('SELECT pg_backend_pid(), coalesce((SELECT ssl FROM pg_stat_ssl '
                                   'WHERE pid = pg_backend_pid()), false)')
                    backend, tls = cursor.fetchone()
                _append(path + '.sessions', f'{self.job.job_id} {backend} {"tls" if tls else "plain"}')
        if hold:
            # A write left uncommitted while the work horse sleeps (to be killed inside its transaction).
            from django.db import transaction
            from extras.models import Tag

            with transaction.atomic():
                name = f'safejobs-harness-{self.job.job_id}'
                Tag.objects.create(name=name, slug=name)
                time.sleep(hold)
        if sleep:
            time.sleep(sleep)
        if path:
            # The end of run(), in a file of its own (the runs file's lines stay three fields): a job closed before
            # this time was closed while its work horse was alive.
            _append(path + '.ends', f'{self.job.job_id} {time.time():.6f} {os.getpid()}')


def _append(path, line):
    # One write() of a short line to an O_APPEND file: lines from concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f'{line}\n'.encode())
    finally:
        os.close(fd)


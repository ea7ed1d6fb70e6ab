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
    SAFEJOBS_HARNESS_RUNS: outside PostgreSQL and Redis, so that duplicate runs are counted even when either fails.
    """

    class Meta:
        name = 'safejobs-harness'

    def run(self, sleep=0, **kwargs):
        path = os.environ.get(RUNS_FILE_VARIABLE)
        if path:
            # One write() of a short line to an O_APPEND file: lines from concurrent workers never interleave.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f'{self.job.job_id} {time.time():.6f} {os.getpid()}\n'.encode())
            finally:
                os.close(fd)
        if sleep:
            time.sleep(sleep)

"""Job runners used by the benchmarks (importable by rqworker processes: the repository root is on PYTHONPATH)."""

from netbox.jobs import JobRunner

__all__ = (
    'TrivialJob',
)


class TrivialJob(JobRunner):
    """Does nothing, so that what is measured is the job machinery itself."""

    class Meta:
        name = 'safejobs-benchmark'

    def run(self, *args, **kwargs):
        pass

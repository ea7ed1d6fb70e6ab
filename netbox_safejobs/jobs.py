"""
The plugin's system job, the retention of retry events; and the system jobs NetBox's registry knows.

Registered from ``ready()`` with NetBox's ``system_job`` decorator (NetBox 4.2+), so every ``rqworker`` schedules it
at start-up as it does NetBox's own housekeeping. Delivery and liveness are not system jobs: a system job lives in
Redis, which is what fails. They run in every worker's own loop (``worker_loop.py``).
"""

import importlib

from netbox.jobs import JobRunner, system_job
from netbox.registry import registry

from .settings import get_settings

__all__ = (
    'EventRetentionJob',
    'register',
    'system_job_runners',
)

RETENTION_INTERVAL = 24 * 60  # minutes


class EventRetentionJob(JobRunner):
    """Delete retry events older than ``event_retention_days``."""

    class Meta:
        name = 'Safe jobs event retention'

    def run(self, *args, **kwargs):
        from .retention import purge_events

        deleted = purge_events()
        self.logger.info(f'deleted {deleted} retry event(s)')
        self.job.data = {'deleted': deleted}


def register():
    """Register the system jobs the settings ask for."""
    settings = get_settings()
    if settings.event_retention_days:
        system_job(RETENTION_INTERVAL)(EventRetentionJob)


def system_job_runners():
    """
    ``{name: runner class}`` of the system jobs in NetBox's registry (``registry['system_jobs']``, every supported
    NetBox): NetBox's housekeeping, the plugin's retention, other plugins' system jobs. A system job is known by its
    name and by having no object: its runner and arguments (none) can be rebuilt from the registry alone.
    """
    # NetBox registers its housekeeping job (4.2.2+) when core.jobs is imported, which its views do: a process that has
    # not loaded the URLconf (a management command without system checks, the harness) would not know it otherwise.
    importlib.import_module('core.jobs')
    return {runner.name: runner for runner in registry['system_jobs']}

"""
The plugin's system job: the retention of retry events.

Registered from ``ready()`` with NetBox's ``system_job`` decorator (NetBox 4.2+), so every ``rqworker`` schedules it
at start-up as it does NetBox's own housekeeping. Delivery and liveness are not system jobs: a system job lives in
Redis, which is what fails. They run in every worker's own loop (``worker_loop.py``).
"""

import logging

from netbox.jobs import JobRunner

from . import compat
from .settings import get_settings

__all__ = (
    'EventRetentionJob',
    'register',
)

logger = logging.getLogger('netbox_safejobs.jobs')

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
    """Register the system jobs the settings ask for. Without NetBox's system jobs, say so once."""
    settings = get_settings()
    wanted = []
    if settings.event_retention_days:
        wanted.append((EventRetentionJob, RETENTION_INTERVAL))
    for runner, interval in wanted:
        decorator = compat.system_job(interval)
        if decorator is None:
            logger.warning('%s not scheduled: this NetBox has no system jobs.', runner.name)
            continue
        decorator(runner)

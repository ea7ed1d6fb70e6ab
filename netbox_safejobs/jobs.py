"""
The plugin's system jobs: the recovery pass and the retention of retry events.

Registered from ``ready()`` with NetBox's ``system_job`` decorator (NetBox 4.2+), so every ``rqworker`` schedules
them at start-up as it does NetBox's own housekeeping.
"""

import logging

from netbox.jobs import JobRunner

from . import compat
from .settings import get_settings

__all__ = (
    'EventRetentionJob',
    'RecoveryJob',
    'register',
)

logger = logging.getLogger('netbox_safejobs.jobs')

RETENTION_INTERVAL = 24 * 60  # minutes


class RecoveryJob(JobRunner):
    """Send owed pushes again and close jobs whose worker died (see ``recovery.py``)."""

    class Meta:
        name = 'Safe jobs recovery'

    @classmethod
    def enqueue_once(cls, *args, **kwargs):
        """
        Every ``rqworker`` schedules the system jobs at start-up with ``enqueue_once()``, which keeps an existing
        scheduled row and pushes nothing. After Redis lost its data, that row's task is gone too, so neither this
        job nor NetBox's housekeeping would ever run again. A worker starting is the moment to look: run the
        owed-push part of the pass here (it re-sends this job's own task as well). Never stops the worker.
        """
        job = super().enqueue_once(*args, **kwargs)
        try:
            from .recovery import run_pass

            run_pass(stuck=False)
        except Exception:
            logger.exception('recovery pass at worker start-up failed; the scheduled pass will try again')
        return job

    def run(self, *args, **kwargs):
        from .recovery import run_pass

        report = run_pass()
        self.logger.info(report.summary())
        self.job.data = {
            'pushed': [str(u) for u in report.pushed],
            'already_queued': report.already_queued,
            'stuck_errored': [str(u) for u in report.stuck_errored],
            'still_running': report.still_running,
            'cleaned': report.cleaned,
            'errors': report.errors,
        }


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
    if settings.recovery_enabled:
        wanted.append((RecoveryJob, settings.recovery_interval))
    if settings.event_retention_days:
        wanted.append((EventRetentionJob, RETENTION_INTERVAL))
    for runner, interval in wanted:
        decorator = compat.system_job(interval)
        if decorator is None:
            logger.warning('%s not scheduled: this NetBox has no system jobs; run `netbox safejobs_recover` from '
                           'cron instead.', runner.name)
            continue
        decorator(runner)

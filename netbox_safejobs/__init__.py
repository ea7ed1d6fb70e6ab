"""netbox-safejobs: NetBox background jobs that are never lost, never run for a rolled-back transaction, never
resurrected after deletion and never run twice, with every retry visible."""

import logging

from django.conf import settings as django_settings
from netbox.plugins import PluginConfig

from .settings import DEFAULT_SETTINGS
from .version import __version__

__all__ = (
    'SafeJobsConfig',
    'config',
)

logger = logging.getLogger('netbox_safejobs.config')


class SafeJobsConfig(PluginConfig):
    name = 'netbox_safejobs'
    verbose_name = 'Safe Jobs'
    description = 'Commit-bound, crash-safe dispatch of background jobs and a worker-side guard, with visible retries'
    version = __version__
    author = 'netbox-safejobs contributors'
    base_url = 'safejobs'
    min_version = '4.2.0'
    max_version = '4.7.99'
    # The settings module holds the one list of keys; NetBox merges these defaults into PLUGINS_CONFIG.
    default_settings = dict(DEFAULT_SETTINGS)
    # The gauges on /metrics when prometheus_client runs in multiprocess mode (see metrics.py); a no-op otherwise.
    middleware = ['netbox_safejobs.metrics.MultiprocessGaugesMiddleware']

    def ready(self):
        super().ready()
        from . import settings

        # Fail at start-up, naming the key, the value and what is allowed, rather than deep inside a worker later.
        config = django_settings.PLUGINS_CONFIG.get(self.name, {})
        settings.validate_settings(config)
        for warning in settings.retired_keys_warnings(config):
            logger.warning(warning)
        settings.connect_signals()

        from . import jobs, patches

        patches.install()
        jobs.register()

        # Not loaded by NetBox from a resource path: the event types of event rules and the dashboard widget.
        from . import event_types, widgets  # noqa: F401

        event_types.register()

        # A "Retry events" count on NetBox's own Jobs table, through its registration of plugin table columns.
        from .tables import JobRetryEventsColumn, register_job_table_column

        if reason := register_job_table_column(JobRetryEventsColumn(), 'safejobs_retry_events'):
            logger.info('No "Retry events" column on the Jobs table: %s', reason)

        # The permission to stop a running job (``stopping.py``): action "stop" on core | job.
        from .compat import register_stop_action

        if reason := register_stop_action():
            logger.info('No "stop" checkbox on the object permission form: %s', reason)

config = SafeJobsConfig

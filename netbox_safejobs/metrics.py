"""
Prometheus counters of the plugin, exposed on NetBox's ``/metrics`` (``METRICS_ENABLED = True``).

Counted by ``events.record()`` and nowhere else. Each process counts its own events: most are recorded by RQ workers,
so the counts of every process reach ``/metrics`` only with prometheus_client's multiprocess mode (the same
``PROMETHEUS_MULTIPROC_DIR`` set for the web server and every ``rqworker``); see docs/ui.md.
"""

import logging

from prometheus_client import Counter

__all__ = (
    'RETRY_EVENTS',
    'count_event',
)

logger = logging.getLogger('netbox_safejobs.metrics')

RETRY_EVENTS = Counter(
    'netbox_safejobs_retry_events',
    'Retry events recorded by netbox-safejobs, by kind (stored or not)',
    ['kind'],
)


def count_event(kind):
    """Count one event. Never raises: a metrics failure must not disturb the job."""
    try:
        RETRY_EVENTS.labels(kind=kind).inc()
    except Exception:
        logger.exception('Could not count a %s event', kind)

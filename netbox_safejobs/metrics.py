"""
Prometheus metrics of the plugin, exposed on NetBox's ``/metrics`` (``METRICS_ENABLED = True``).

- A counter of retry events, counted by ``events.record()`` and nowhere else. Each process counts its own events: most
  are recorded by RQ workers, so the counts of every process reach ``/metrics`` only with prometheus_client's
  multiprocess mode (the same ``PROMETHEUS_MULTIPROC_DIR`` set for the web server and every ``rqworker``); see
  docs/ui.md.
- Gauges computed from the database when ``/metrics`` is scraped (``BacklogCollector``), so that they are right
  whatever process serves the scrape: owed pushes, the oldest one's age, claimed leases, stuck candidates, events of
  the last hour by kind, and workers RQ lists without a heartbeat of the plugin. Two indexed queries per scrape.
  Registered on prometheus_client's default registry, which NetBox's ``/metrics`` serves in a single process. In
  multiprocess mode django-prometheus's view serves a registry of its own, made of the multiprocess files only:
  ``MultiprocessGaugesMiddleware`` adds the gauges to that response.
"""

import logging
import os

from django.db import DatabaseError, connections
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = (
    'RETRY_EVENTS',
    'BacklogCollector',
    'MultiprocessGaugesMiddleware',
    'count_event',
    'multiprocess_mode',
    'register_collector',
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


def _families():
    return {
        'owed': GaugeMetricFamily(
            'netbox_safejobs_owed_pushes', 'Pushes to Redis the relay is to send (failed, or never made), now'),
        'oldest_owed_age': GaugeMetricFamily(
            'netbox_safejobs_oldest_owed_age_seconds', 'Seconds since the oldest owed push was written (0 when none)'),
        'claimed': GaugeMetricFamily(
            'netbox_safejobs_claimed_leases', 'Jobs claimed by a worker and running (leases), now'),
        'leases_without_heartbeat': GaugeMetricFamily(
            'netbox_safejobs_leases_without_heartbeat',
            'Leases whose worker and work horse have not heartbeated for two heartbeat intervals'),
        'stuck': GaugeMetricFamily(
            'netbox_safejobs_stuck_candidates',
            'Leases whose worker and work horse have not heartbeated for stuck_after seconds (to be closed)'),
        'events': GaugeMetricFamily(
            'netbox_safejobs_events_last_hour', 'Retry events recorded in the last hour, by kind', labels=['kind']),
        'workers': GaugeMetricFamily(
            'netbox_safejobs_workers', 'Workers with a fresh heartbeat of the plugin'),
        'unguarded': GaugeMetricFamily(
            'netbox_safejobs_workers_without_plugin',
            'Workers RQ lists that have no fresh heartbeat of the plugin (no guard, relay or liveness check)'),
    }


class BacklogCollector:
    """
    The gauges, read from PostgreSQL (and RQ's worker registry) at every scrape. Never raises: a part that fails
    (database or Redis down) is left out of the scrape and logged, and the rest of ``/metrics`` is served.

    Per scrape: ``health.backlog()`` (one statement on the partial indexes of JobDispatch), and one statement for the
    last hour's events by kind (the time index of RetryEvent) and the fresh heartbeats (their ``seen`` index); and, per
    Redis, RQ's worker registry and one pipelined ``EXISTS``.
    """

    def __init__(self, using='default'):
        self.using = using

    def describe(self):
        # Without describe(), prometheus_client would call collect() (and query the database) on registration.
        return list(_families().values())

    def collect(self):
        from .choices import RetryEventKindChoices
        from .health import backlog
        from .models import RetryEvent, WorkerHeartbeat
        from .settings import get_settings

        families = _families()
        settings = get_settings()
        try:
            values = backlog(self.using, settings)
            with connections[self.using].cursor() as cursor:
                # One round trip for both: under load every statement also waits for a CPU on each side.
                cursor.execute(
                    f'SELECT (SELECT array_agg(name) FROM {WorkerHeartbeat._meta.db_table} '
                    f"WHERE seen > now() - %s * interval '1 second'), e.kinds, e.counts "
                    f'FROM (SELECT array_agg(kind) AS kinds, array_agg(n) AS counts FROM (SELECT kind, count(*) AS n '
                    f"FROM {RetryEvent._meta.db_table} WHERE time > now() - interval '1 hour' GROUP BY kind) g) e",
                    [3 * settings.heartbeat_interval],
                )
                names, kinds, counts = cursor.fetchone()
                live = set(names or ())
                events = dict(zip(kinds or (), counts or (), strict=True))
        except DatabaseError:
            logger.warning('netbox-safejobs gauges left out of this scrape: the database failed', exc_info=True)
            try:
                connections[self.using].close()
            except Exception:
                pass
            return
        except Exception:
            logger.exception('netbox-safejobs gauges left out of this scrape')
            return
        for key in ('owed', 'oldest_owed_age', 'claimed', 'leases_without_heartbeat', 'stuck'):
            families[key].add_metric([], float(values[key]))
        for kind, *_rest in RetryEventKindChoices.CHOICES:
            families['events'].add_metric([kind], float(events.get(kind, 0)))
        families['workers'].add_metric([], float(len(live)))
        unguarded = self._unguarded(live)
        for key, family in families.items():
            if key != 'unguarded':
                yield family
        if unguarded is not None:
            families['unguarded'].add_metric([], float(unguarded))
            yield families['unguarded']

    def _unguarded(self, live):
        """How many workers RQ lists have no fresh heartbeat; None when a Redis does not answer."""
        from .queues import redis_groups, rq_worker_names

        try:
            names = set()
            for connection, _queues in redis_groups().values():
                names |= rq_worker_names(connection)
        except Exception as e:
            logger.warning('netbox_safejobs_workers_without_plugin left out of this scrape: %s', e)
            return None
        return len(names - live)


_collector = None


def register_collector(registry=REGISTRY):
    """Register the gauges on prometheus_client's default registry (NetBox's ``/metrics``), once per process."""
    global _collector
    if _collector is None:
        _collector = BacklogCollector()
        registry.register(_collector)
    return _collector


register_collector()

# The gauges alone, for the multiprocess response. The same collector: describe() keeps registration query-free.
_gauges_registry = CollectorRegistry(auto_describe=False)
_gauges_registry.register(_collector)


def multiprocess_mode():
    """Whether django-prometheus serves ``/metrics`` from prometheus_client's multiprocess files (its own test)."""
    return 'PROMETHEUS_MULTIPROC_DIR' in os.environ or 'prometheus_multiproc_dir' in os.environ


def _is_metrics_view(request):
    match = getattr(request, 'resolver_match', None)
    if match is None:
        return False
    from django_prometheus import exports

    return match.func is exports.ExportToDjangoView


class MultiprocessGaugesMiddleware:
    """
    Appends the gauges to NetBox's ``/metrics`` when prometheus_client runs in multiprocess mode.

    There django-prometheus's view builds a fresh registry holding only a ``MultiProcessCollector`` (the metrics the
    processes wrote to ``PROMETHEUS_MULTIPROC_DIR``), so collectors of the default registry are not served and the
    view has no hook. The gauges are read from the database, the same for every process, so they belong in no
    multiprocess file: this process computes them at the scrape and adds their families after the view's, in the
    same text format. In a single process the default registry already carries them and nothing is added. Any other
    response passes untouched; a failure leaves the response as the view made it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code != 200 or getattr(response, 'streaming', False) or not multiprocess_mode():
            return response
        try:
            if not _is_metrics_view(request):
                return response
            response.content = response.content + generate_latest(_gauges_registry)
            if response.has_header('Content-Length'):
                response['Content-Length'] = str(len(response.content))
        except Exception:
            logger.exception('netbox-safejobs gauges left out of this multiprocess scrape')
        return response

"""
The events of one job as its Job page panel and each event's page show them: the newest few, how many there are,
and a link to all of them.
"""

from typing import NamedTuple

from django.urls import reverse

from .models import RetryEvent
from .tables import JobRetryEventTable

__all__ = (
    'JOB_EVENTS_SHOWN',
    'JobEvents',
    'job_events',
)

# How many of a job's events its Job page panel and each event's page show; the others are a link away.
JOB_EVENTS_SHOWN = 10


class JobEvents(NamedTuple):
    table: JobRetryEventTable
    count: int
    shown: int
    url: str


def job_events(user, job_uuid):
    """
    The events of one job that ``user`` may view, newest first, as the Job page panel and an event's page show them:
    a table of the newest ``JOB_EVENTS_SHOWN``, how many there are, and the URL of the event list of all of them. The
    job_uuid index answers both queries, whatever the number of events; the count is made only when the table is full.
    """
    events = RetryEvent.objects.restrict(user, 'view').filter(job_uuid=job_uuid)
    shown = list(events[:JOB_EVENTS_SHOWN])
    count = len(shown) if len(shown) < JOB_EVENTS_SHOWN else events.count()
    url = f"{reverse('plugins:netbox_safejobs:retryevent_list')}?job_uuid={job_uuid}"
    return JobEvents(JobRetryEventTable(shown, orderable=False), count, len(shown), url)

"""Test data and helpers shared by the UI, API, GraphQL and filter tests of retry events."""

import uuid
from datetime import timedelta

from core.models import Job
from django.urls import reverse
from django.utils import timezone

from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent

__all__ = (
    'event_url',
    'make_events',
)


def event_url(event):
    return reverse('plugins:netbox_safejobs:retryevent', kwargs={'pk': event.pk})


def make_events():
    """
    Two jobs with events and one job without a row, spread over kinds, runners, queues, workers and times:

    - job A (row exists, "nightly sync"): retry (attempt 1, 0.5 s), retry (2, 0.5 s), found_after_retry — worker-1
    - job B (row exists, "report run"): dispatch_failed — web-1
    - job C (no row, "lost job"): retry, gave_up (3 days old) — worker-2
    """
    now = timezone.now()
    job_a = Job.objects.create(name='nightly sync', job_id=uuid.uuid4())
    job_b = Job.objects.create(name='report run', job_id=uuid.uuid4())
    uuid_c = uuid.uuid4()
    K = RetryEventKindChoices
    specs = [
        (job_a, job_a.job_id, 'nightly sync', 'core.jobs.SyncDataSourceJob', 'low', K.KIND_RETRY, 1, 0.5,
         'Job row not found; looking again.', 'worker-1', 101, now - timedelta(minutes=10)),
        (job_a, job_a.job_id, 'nightly sync', 'core.jobs.SyncDataSourceJob', 'low', K.KIND_RETRY, 2, 0.5,
         'Job row not found; looking again.', 'worker-1', 101, now - timedelta(minutes=9)),
        (job_a, job_a.job_id, 'nightly sync', 'core.jobs.SyncDataSourceJob', 'low', K.KIND_FOUND_AFTER_RETRY, 2, 1.0,
         'Job row found after 2 retries.', 'worker-1', 101, now - timedelta(minutes=8)),
        (job_b, job_b.job_id, 'report run', 'extras.jobs.ScriptJob', 'default', K.KIND_DISPATCH_FAILED, None, None,
         'ConnectionError: Redis down', 'web-1', 202, now - timedelta(hours=2)),
        (None, uuid_c, 'lost job', 'tests.jobs.CountingJob', 'high', K.KIND_RETRY, 1, 0.25,
         'Job row not found; looking again.', 'worker-2', 303, now - timedelta(days=3, minutes=1)),
        (None, uuid_c, 'lost job', 'tests.jobs.CountingJob', 'high', K.KIND_GAVE_UP, 5, 12.0,
         'Job row not found after 5 retries.', 'worker-2', 303, now - timedelta(days=3)),
    ]
    events = [
        RetryEvent.objects.create(
            job=job, job_uuid=job_uuid, job_name=name, runner=runner, queue=queue, kind=kind, attempt=attempt,
            delay=delay, detail=detail, worker_host=host, worker_pid=pid, time=time,
        )
        for job, job_uuid, name, runner, queue, kind, attempt, delay, detail, host, pid, time in specs
    ]
    return {'job_a': job_a, 'job_b': job_b, 'uuid_c': uuid_c, 'events': events}

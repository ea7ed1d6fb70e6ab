"""
``netbox safejobs_demo``: provoke every kind of retry event on a running NetBox, so that the retry-events page
shows real ones within a minute. Needs a running ``rqworker`` (``scripts/dev run`` starts one).

Every step uses the plugin's real code paths against the real database and Redis; only the stuck job is staged
(a job claimed an hour ago by a worker that no longer exists), because killing a real worker is not a demo.
"""

import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from netbox.jobs import JobRunner

from . import compat
from .choices import RetryEventKindChoices
from .models import JobDispatch, RetryEvent

__all__ = (
    'DemoJob',
    'run_demo',
)


class DemoJob(JobRunner):
    """A job that does nothing; what matters is what happens on its way to a worker."""

    class Meta:
        name = 'Safe jobs demo'

    def run(self, *args, **kwargs):
        self.logger.info('demo job ran')


def _push_directly(job, rq_job_id=None):
    """Push a task the way NetBox <= 4.2.5 did: at once, whatever the transaction."""
    return compat.get_push_queue(compat.job_queue_name(job)).enqueue(
        DemoJob.handle, job_id=rq_job_id or str(job.job_id), job=job,
    )


def _new_job():
    """A Job not saved yet."""
    from core.models import Job

    return Job(name=DemoJob.name, job_id=uuid.uuid4(), status='pending',
               **compat.job_field_values(queue_name='default'))


def run_demo(out=print, wait=60):
    from core.models import Job

    started = timezone.now()
    jobs = []

    out('1. A task pushed before its transaction commits (NetBox <= 4.2.5): "retry", then "found after retry".')
    late = _new_job()
    with transaction.atomic():
        late.save()
        _push_directly(late)
        # Held open until the worker has looked once and not found the row (its event is committed by the
        # worker, so visible from inside this transaction), or 30 seconds.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not RetryEvent.objects.filter(
            job_uuid=late.job_id, kind=RetryEventKindChoices.KIND_RETRY,
        ).exists():
            time.sleep(0.2)
    jobs.append(late.job_id)

    out('2. A task whose Job row never existed (rolled back): "retry" ×5, then "gave up"; nothing is inserted.')
    ghost = _new_job()
    _push_directly(ghost)
    jobs.append(ghost.job_id)

    out('3. The same task pushed twice: it runs once, the copy records "duplicate skipped".')
    twice = DemoJob.enqueue()
    _push_directly(twice, rq_job_id=str(uuid.uuid4()))
    jobs.append(twice.job_id)

    out('4. Redis unreachable at commit: no error for the caller, "dispatch failed"; the recovery pass then sends '
        'it: "recovered".')
    unreachable = {name: {**params, 'PORT': 1} for name, params in settings.RQ_QUEUES.items()}
    for params in unreachable.values():
        params.pop('URL', None)
    with compat.override_rq_queues(unreachable):
        with transaction.atomic():
            lost = DemoJob.enqueue()
    jobs.append(lost.job_id)
    # As if the recovery system job ran recovery_min_age later.
    from .recovery import run_pass

    JobDispatch.objects.filter(job=lost).update(created=timezone.now() - timedelta(hours=1))
    run_pass(stuck=False)

    out('5. The database connection killed while the guard checks a row: "database error", then the job runs.')
    killed = Job.objects.create(name=DemoJob.name, job_id=uuid.uuid4(), **compat.job_field_values(queue_name='default'))
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    import psycopg

    s = connection.settings_dict
    with psycopg.connect(host=s['HOST'] or None, port=s['PORT'] or None, user=s['USER'], dbname=s['NAME'],
                         password=s.get('PASSWORD') or None, autocommit=True) as other:
        other.execute('SELECT pg_terminate_backend(%s)', [pid])
    time.sleep(0.2)
    DemoJob.handle(killed)
    jobs.append(killed.job_id)

    out('6. A job left "running" by a worker that died (staged: claimed an hour ago, no RQ task): '
        '"stuck job errored".')
    stuck = Job.objects.create(name=DemoJob.name, job_id=uuid.uuid4(), status='running',
                               started=timezone.now() - timedelta(hours=1),
                               **compat.job_field_values(queue_name='default'))
    JobDispatch.objects.create(job=stuck, job_uuid=stuck.job_id, queue_name='default',
                               runner=f'{DemoJob.__module__}.{DemoJob.__qualname__}',
                               claimed=timezone.now() - timedelta(hours=1), worker_host='gone', worker_pid=1)
    run_pass()
    jobs.append(stuck.job_id)

    out(f'Waiting up to {wait}s for the worker to take the tasks...')
    wanted = set(RetryEventKindChoices.values())
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        seen = set(RetryEvent.objects.filter(job_uuid__in=jobs, time__gte=started).values_list('kind', flat=True))
        if seen >= wanted:
            break
        time.sleep(1)
    counts = {}
    for kind in RetryEvent.objects.filter(job_uuid__in=jobs, time__gte=started).values_list('kind', flat=True):
        counts[kind] = counts.get(kind, 0) + 1
    for kind in RetryEventKindChoices.values():
        out(f'  {kind:<20} {counts.get(kind, 0)}')
    missing = wanted - set(counts)
    if missing:
        out(f'Not seen (is an rqworker running?): {", ".join(sorted(missing))}')
    return counts, missing

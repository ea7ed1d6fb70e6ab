"""
``netbox safejobs_demo``: provoke every kind of retry event on a running NetBox, so that the retry-events page
shows real ones within a minute. Needs a running ``rqworker`` (``scripts/dev run`` starts one).

Every step uses the plugin's real code paths against the real database and Redis; only the stuck job is staged
(a job claimed by a worker whose heartbeat stopped an hour ago), because killing a real worker is not a demo, and so
is the damaged stored push.
"""

import time
import uuid
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone
from netbox.jobs import JobRunner

from .choices import RetryEventKindChoices
from .models import JobDispatch, RetryEvent, WorkerHeartbeat
from .testing.fixtures import create_job, push_directly, terminate_connection, unsaved_job
from .testing.queues import closed_port_queues, override_rq_queues

__all__ = (
    'DemoJob',
    'run_demo',
)


class DemoJob(JobRunner):
    """A job that does nothing; what matters is what happens on its way to a worker."""

    class Meta:
        name = 'Safe jobs demo'

    def run(self, *args, pause=0, **kwargs):
        if pause:
            time.sleep(pause)
        self.logger.info('demo job ran')


def run_demo(out=print, wait=60):
    from core.models import Job

    started = timezone.now()
    jobs = []

    out('1. A task pushed before its transaction commits (NetBox <= 4.2.5): "retry", then "found after retry".')
    late = unsaved_job(DemoJob.name)
    with transaction.atomic():
        late.save()
        push_directly(late, DemoJob)
        # Held open until the worker has looked once and not found the row (its event is committed by the
        # worker, so visible from inside this transaction), or 30 seconds.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not RetryEvent.objects.filter(
            job_uuid=late.job_id, kind=RetryEventKindChoices.KIND_RETRY,
        ).exists():
            time.sleep(0.2)
    jobs.append(late.job_id)

    out('2. A task whose Job row never existed (rolled back): "retry" ×5, then "gave up"; nothing is inserted.')
    ghost = unsaved_job(DemoJob.name)
    push_directly(ghost, DemoJob)
    jobs.append(ghost.job_id)

    out('3. The same task pushed twice: it runs once, the copy records "duplicate skipped".')
    twice = DemoJob.enqueue()
    push_directly(twice, DemoJob, rq_job_id=str(uuid.uuid4()))
    jobs.append(twice.job_id)

    out('4. Redis unreachable at commit: no error for the caller, "dispatch failed", the push owed at once; the '
        'relay then sends it: "recovered".')
    with override_rq_queues(closed_port_queues()):
        with transaction.atomic():
            lost = DemoJob.enqueue()
    jobs.append(lost.job_id)
    # What the relay in every worker does within a second; run here so the demo does not depend on its timing.
    from .recovery import run_pass

    run_pass(stuck=False)

    out('5. The database connection killed while the guard checks a row: "database error", then the job runs.')
    killed = create_job(DemoJob.name)
    terminate_connection(connection)
    time.sleep(0.2)
    DemoJob.handle(killed)
    jobs.append(killed.job_id)

    out('6. A job left "running" by a worker that died (staged: its heartbeat stopped an hour ago): '
        '"stuck job errored".')
    stuck = create_job(DemoJob.name, status='running', started=timezone.now() - timedelta(hours=1))
    dead_worker = uuid.uuid4()
    an_hour_ago = timezone.now() - timedelta(hours=1)
    WorkerHeartbeat.objects.create(id=dead_worker, name='demo-gone', host='gone', pid=1, version='demo',
                                   started=an_hour_ago, seen=an_hour_ago)
    JobDispatch.objects.create(job=stuck, job_uuid=stuck.job_id, queue_name='default',
                               runner=f'{DemoJob.__module__}.{DemoJob.__qualname__}', token=uuid.uuid4(),
                               claimed=timezone.now() - timedelta(hours=1), worker=dead_worker, worker_host='gone',
                               worker_pid=1)
    run_pass()
    jobs.append(stuck.job_id)

    out('7. A job whose row is deleted while it runs: "row deleted mid-run"; the row is not re-created.')
    doomed = DemoJob.enqueue(pause=3)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not Job.objects.filter(pk=doomed.pk, status='running').exists():
        time.sleep(0.2)
    Job.objects.filter(pk=doomed.pk).delete()
    jobs.append(doomed.job_id)

    out('8. A stored push that is not ours (staged: its signature broken): "saved task rejected", the job errored.')
    with override_rq_queues(closed_port_queues()):
        forged = DemoJob.enqueue()
    row = JobDispatch.objects.get(job=forged)
    JobDispatch.objects.filter(pk=row.pk).update(payload=bytes(row.payload)[:-1] + b'!')
    run_pass(stuck=False)
    jobs.append(forged.job_id)

    out('9. A queued task deleted from Background Tasks: "stopped by operator"; it is not sent again.')
    from core.utils import delete_rq_job

    cancelled = DemoJob.enqueue(schedule_at=timezone.now() + timedelta(hours=1))
    delete_rq_job(str(cancelled.job_id))
    jobs.append(cancelled.job_id)

    out('10. An event rule\'s webhook whose receiver refuses the connection: "webhook failed"; with no retry left '
        '(RQ_RETRY_MAX) it waits under Jobs in flight as "gave up", for Send again.')
    staged = _refused_webhook()
    jobs.append(staged['task'])

    out('11. Two jobs NetBox left without the plugin (staged: created an hour ago by a process without it, so with '
        'no row in flight): one scheduled with its task in Redis is "adopted"; one whose task Redis lost, with '
        'arguments nothing can rebuild, is "not adopted" and listed. What a worker does when it starts.')
    jobs += _left_without_the_plugin()

    out('12. A periodic job with two future runs (NetBox #21167): merged into the earliest, "chain merged". What a '
        'worker does when it starts.')
    jobs += _two_future_runs()

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
    staged['cleanup']()
    missing = wanted - set(counts)
    if missing:
        out(f'Not seen (is an rqworker running?): {", ".join(sorted(missing))}')
    return counts, missing


def _left_without_the_plugin():
    """
    A scheduled job with its task in Redis and a pending one without, both as stock NetBox leaves them (no dispatch
    row, created long enough ago to be judged), adopted; the pending one, listed and never to run, is then deleted.
    """
    from core.models import Job

    from .adoption import adopt
    from .queues import get_push_queue

    an_hour_ago = timezone.now() - timedelta(hours=1)
    waiting = create_job(DemoJob.name, status='scheduled', scheduled=timezone.now() + timedelta(hours=1))
    get_push_queue('default').enqueue_at(waiting.scheduled, DemoJob.handle, job_id=str(waiting.job_id), job=waiting)
    orphan = create_job(DemoJob.name)
    Job.objects.filter(pk__in=[waiting.pk, orphan.pk]).update(created=an_hour_ago)
    adopt()
    Job.objects.get(pk=orphan.pk).delete()
    return [waiting.job_id, orphan.job_id]


def _two_future_runs():
    """Two future runs of one hourly demo job, merged; the run kept is deleted too (the demo leaves no schedule)."""
    from core.models import Job

    from .chains import merge

    runs = [DemoJob.enqueue(interval=60, schedule_at=timezone.now() + timedelta(minutes=minutes))
            for minutes in (30, 40)]
    merge()
    for job in Job.objects.filter(pk__in=[run.pk for run in runs]):
        job.delete()
    return [run.job_id for run in runs]


def _refused_webhook():
    """
    A tag created in a request (NetBox's event tracking), with an event rule sending a webhook to a port nothing
    listens on. Returns the webhook's RQ task id and a cleanup that removes the tag, the rule and the webhook (the
    webhook's row stays, as gave up, to be looked at).
    """
    from core.models import ObjectType
    from django.test import RequestFactory
    from extras.models import EventRule, Tag, Webhook
    from netbox.context_managers import event_tracking
    from users.models import User

    name = f'safe-jobs-demo-{uuid.uuid4().hex[:8]}'
    webhook = Webhook.objects.create(name=name, payload_url='http://127.0.0.1:1/refused')
    rule = EventRule.objects.create(name=name, event_types=['object_created'], action_type='webhook',
                                    action_object_type=ObjectType.objects.get_for_model(Webhook),
                                    action_object_id=webhook.pk)
    rule.object_types.set([ObjectType.objects.get_for_model(Tag)])
    user, _ = User.objects.get_or_create(username='safe-jobs-demo')
    request = RequestFactory().post('/')
    request.user, request.id = user, uuid.uuid4()
    before = set(JobDispatch.objects.filter(job__isnull=True).values_list('pk', flat=True))
    with event_tracking(request):
        tag = Tag.objects.create(name=name, slug=name)
    row = JobDispatch.objects.filter(job__isnull=True).exclude(pk__in=before).first()

    def cleanup():
        Tag.objects.filter(pk=tag.pk).delete()
        EventRule.objects.filter(pk=rule.pk).delete()
        Webhook.objects.filter(pk=webhook.pk).delete()

    return {'task': row.job_uuid if row else uuid.uuid4(), 'cleanup': cleanup}

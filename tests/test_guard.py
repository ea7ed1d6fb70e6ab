"""The worker guard, against real PostgreSQL, Redis and `netbox rqworker --burst` subprocesses."""

import time
import uuid

from core.models import Job
from django.db import OperationalError, connection, transaction
from django.test import override_settings
from django_rq import get_queue

from netbox_safejobs import patches
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.queues import get_push_queue
from netbox_safejobs.testing import fixtures

from .base import SafeJobsTransactionTestCase, Worker, run_burst_worker
from .jobs import CountingJob, FailingJob, run_count

FAST = {'lookup_retries': 4, 'lookup_base_delay': 0.3, 'lookup_max_wait': 10.0}


def push_directly(job, rq_job_id=None):
    """Push a task for ``job`` the way stock NetBox does, bypassing the plugin's dispatch."""
    return fixtures.push_directly(job, CountingJob, rq_job_id)


def unsaved_job():
    return fixtures.unsaved_job(CountingJob.name)


class WorkerGuardTest(SafeJobsTransactionTestCase):

    def kinds(self, job_uuid):
        return list(RetryEvent.objects.filter(job_uuid=job_uuid).order_by('time', 'pk').values_list('kind', flat=True))

    def test_patch_installed(self):
        self.assertIn('guard', patches.installed())

    def test_happy_path_writes_no_event(self):
        job = CountingJob.enqueue()
        run_burst_worker(plugins_config=FAST)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertIsNotNone(job.started)
        self.assertEqual(job.data, {'ran': True})
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(RetryEvent.objects.exists())
        self.assertFalse(JobDispatch.objects.filter(job=job).exists(), 'lease not removed')

    def test_row_committed_late_is_found_after_retry(self):
        job = unsaved_job()
        with transaction.atomic():
            job.save()
            push_directly(job)  # the task is in Redis before the row is committed (NetBox <= 4.2.5)
            worker = Worker(plugins_config=FAST)
            # Hold the transaction open past the worker's first look. The worker's events are committed by it,
            # so they are visible from inside this transaction (READ COMMITTED).
            self.wait_for(lambda: RetryEvent.objects.filter(job_uuid=job.job_id, kind=Kind.KIND_RETRY).exists(),
                          timeout=90, message='first retry of the worker')
        self.assertEqual(worker.wait(), 0, worker.output)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        kinds = self.kinds(job.job_id)
        self.assertIn(Kind.KIND_RETRY, kinds)
        self.assertEqual(kinds[-1], Kind.KIND_FOUND_AFTER_RETRY)
        retry = RetryEvent.objects.filter(job_uuid=job.job_id, kind=Kind.KIND_RETRY).order_by('time').first()
        self.assertEqual(retry.attempt, 1)
        self.assertEqual(retry.delay, 0.3)
        self.assertEqual(retry.runner, 'tests.jobs.CountingJob')
        self.assertEqual(retry.queue, 'default')
        self.assertTrue(retry.worker_host)
        self.assertIsNotNone(retry.worker_pid)
        found = RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_FOUND_AFTER_RETRY)
        self.assertEqual(found.job_id, job.pk)
        self.assertGreater(found.delay, 0)

    def test_row_never_committed_gives_up_without_insert(self):
        job = unsaved_job()
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                job.save()
                push_directly(job)
                raise RuntimeError('roll back')
        run_burst_worker(plugins_config=FAST)
        self.assertFalse(Job.objects.filter(job_id=job.job_id).exists(), 'the worker re-created the row')
        self.assertEqual(run_count(job.job_id), 0)
        self.assertEqual(self.kinds(job.job_id), [Kind.KIND_RETRY] * 4 + [Kind.KIND_GAVE_UP])
        gave_up = RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_GAVE_UP)
        self.assertIsNone(gave_up.job_id)
        self.assertEqual(gave_up.attempt, 4)
        self.assertEqual(gave_up.job_name, CountingJob.name)

    def test_deleted_row_is_not_resurrected(self):
        """NetBox #21129: housekeeping deletes the row (a queryset delete, no RQ cancel) before the task runs."""
        job = CountingJob.enqueue()
        Job.objects.filter(pk=job.pk).delete()
        run_burst_worker(plugins_config=FAST)
        self.assertFalse(Job.objects.filter(job_id=job.job_id).exists(), 'the deleted row came back')
        self.assertEqual(run_count(job.job_id), 0)
        # Pushed by the plugin after commit: the row was deleted, not committing. Dropped at once, one event.
        self.assertEqual(self.kinds(job.job_id), [Kind.KIND_GAVE_UP])
        self.assertIn('deleted', RetryEvent.objects.get(job_uuid=job.job_id).detail)

    def test_deleted_row_tasks_cost_no_more_than_live_ones(self):
        """20 tasks whose rows were deleted cost a worker no more than 1.2x the time of 20 live trivial jobs."""
        def burst(delete):
            jobs = [CountingJob.enqueue() for _ in range(20)]
            if delete:
                Job.objects.filter(pk__in=[job.pk for job in jobs]).delete()
            started = time.monotonic()
            run_burst_worker()
            return time.monotonic() - started

        live = burst(delete=False)
        deleted = burst(delete=True)
        # One worker start-up is in both figures; the backoff schedule (5 retries, ~6 s a task) is in neither.
        self.assertLess(deleted, live * 1.2 + 1.0, f'deleted-row tasks took {deleted:.1f}s, live ones {live:.1f}s')
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_GAVE_UP).count(), 20)
        self.assertEqual(RetryEvent.objects.count(), 20)

    def test_claim_whose_reply_was_lost_runs_the_job_once(self):
        """The claim commits, the connection dies before the reply: the retry recognises its own claim and runs."""
        from netbox_safejobs import guard

        job = CountingJob.enqueue()
        real = guard._claim_once
        calls = []

        def claim_then_lose_reply(*args, **kwargs):
            calls.append(1)
            result = real(*args, **kwargs)
            if len(calls) == 1:
                raise OperationalError('server closed the connection unexpectedly')
            return result

        guard._claim_once = claim_then_lose_reply
        try:
            with override_settings(PLUGINS_CONFIG={'netbox_safejobs': {**FAST, 'database_retries': 2}}):
                CountingJob.handle(job)
        finally:
            guard._claim_once = real
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertEqual(self.kinds(job.job_id), [Kind.KIND_DATABASE_ERROR])
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        # Another attempt (another token) is a duplicate, as ever.
        Job.objects.filter(pk=job.pk).update(status='pending')
        mine = uuid.uuid4()
        self.assertIsNotNone(guard.claim(CountingJob, job, token=mine))
        self.assertIsNotNone(guard.claim(CountingJob, job, token=mine), 'a retried claim did not recognise itself')
        self.assertIsNone(guard.claim(CountingJob, job, token=uuid.uuid4()))
        self.assertEqual(self.kinds(job.job_id)[-1], Kind.KIND_DUPLICATE_SKIPPED)

    def test_requeue_from_failed_registry_runs_as_in_stock_netbox(self):
        from core.utils import requeue_rq_job
        from rq.registry import FailedJobRegistry

        job = CountingJob.enqueue()
        queue = get_push_queue('default')
        task = queue.fetch_job(str(job.job_id))
        queue.remove(task)
        task.set_status('failed')
        FailedJobRegistry(queue=queue).add(task, ttl=600)
        requeue_rq_job(str(job.job_id))
        run_burst_worker(plugins_config=FAST)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(RetryEvent.objects.exists())

    def test_same_task_pushed_twice_runs_once(self):
        job = CountingJob.enqueue()
        push_directly(job, rq_job_id=str(uuid.uuid4()))
        self.assertEqual(get_queue('default').count, 2)
        run_burst_worker(plugins_config=FAST)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertEqual(self.kinds(job.job_id), [Kind.KIND_DUPLICATE_SKIPPED])
        self.assertIn('already', RetryEvent.objects.get(job_uuid=job.job_id).detail)

    def test_stale_snapshot_does_not_overwrite_row(self):
        job = CountingJob.enqueue()
        Job.objects.filter(pk=job.pk).update(name='renamed after enqueue')
        run_burst_worker(plugins_config=FAST)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(job.name, 'renamed after enqueue')

    def test_periodic_job_rescheduled_on_success(self):
        job = CountingJob.enqueue(interval=60)
        run_burst_worker(plugins_config=FAST)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        successor = Job.objects.filter(name=CountingJob.name, status='scheduled', interval=60).get()
        self.assertGreater(successor.scheduled, job.started)
        self.assertEqual(JobDispatch.objects.get(job=successor).method, 'enqueue_at')
        self.assertIn(str(successor.job_id), get_queue('default').scheduled_job_registry.get_job_ids())

    def test_failing_job_is_errored_as_netbox_does(self):
        job = FailingJob.enqueue()
        run_burst_worker(plugins_config=FAST)
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored')
        self.assertEqual(job.error, "RuntimeError('boom')")
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(RetryEvent.objects.exists())

    def test_database_connection_terminated_during_check(self):
        """pg_terminate_backend on the guard's connection: a database error, not a missing row; retried."""
        job = CountingJob.enqueue()
        fixtures.terminate_connection(connection)
        time.sleep(0.2)
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': {**FAST}}):
            CountingJob.handle(job)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        event = RetryEvent.objects.get(job_uuid=job.job_id)
        self.assertEqual(event.kind, Kind.KIND_DATABASE_ERROR)
        self.assertEqual(event.attempt, 1)
        self.assertIn('OperationalError', event.detail)

    def test_database_down_raises_and_keeps_job(self):
        """The database stays away: the guard raises (RQ marks the task failed); the job is not dropped."""
        job = CountingJob.enqueue()
        settings_dict = connection.settings_dict
        port = settings_dict['PORT']
        connection.close()
        settings_dict['PORT'] = '1'
        try:
            with override_settings(PLUGINS_CONFIG={'netbox_safejobs': {**FAST, 'database_retries': 2}}):
                with self.assertRaises(OperationalError):
                    CountingJob.handle(job)
        finally:
            connection.close()
            settings_dict['PORT'] = port
        job.refresh_from_db()
        self.assertEqual(job.status, 'pending')
        self.assertEqual(run_count(job.job_id), 0)
        self.assertTrue(JobDispatch.objects.filter(job=job, payload__isnull=False).exists())

    def test_guard_switch(self):
        from netbox.jobs import JobRunner

        patches.uninstall('guard')
        try:
            self.assertNotIn('guard', patches.installed())
            self.assertFalse(hasattr(JobRunner.__dict__['handle'].__func__, '__safejobs_original__'))
        finally:
            patches.install()
        self.assertTrue(hasattr(JobRunner.__dict__['handle'].__func__, '__safejobs_original__'))


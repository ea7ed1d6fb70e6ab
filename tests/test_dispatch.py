"""On-commit, durable dispatch: what reaches Redis, when, and what is stored until a worker claims the job."""

import pickle
import threading
from datetime import timedelta

from core.models import Job
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from django_rq import get_queue
from rq.job import Job as RQJob

from netbox_safejobs import compat, patches
from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.recovery import run_pass

from .base import SafeJobsTransactionTestCase, run_burst_worker
from .jobs import CountingJob, run_count


def closed_port_queues():
    """RQ_QUEUES with every queue pointed at a port nothing listens on: Redis is 'down'."""
    from django.conf import settings

    queues = {}
    for name, params in settings.RQ_QUEUES.items():
        params = dict(params)
        params['PORT'] = 1
        params.pop('URL', None)
        queues[name] = params
    return queues


class DispatchTestMixin:
    """The dispatch tests, run under each of django-rq's commit modes (see the subclasses)."""

    def in_redis(self, job):
        return RQJob.exists(str(job.job_id), connection=self.redis)

    def test_patch_installed(self):
        self.assertIn('dispatch', patches.installed())

    def test_commit_pushes_after_commit(self):
        with transaction.atomic():
            job = CountingJob.enqueue()
            self.assertFalse(self.in_redis(job), 'pushed before commit')
            self.assertTrue(JobDispatch.objects.filter(job=job, payload__isnull=False).exists())
        self.assertTrue(self.in_redis(job))
        self.assertIn(str(job.job_id), get_queue('default').get_job_ids())
        self.assertFalse(RetryEvent.objects.exists())

    def test_autocommit_pushes_at_once(self):
        job = CountingJob.enqueue()
        self.assertTrue(self.in_redis(job))
        self.assertEqual(JobDispatch.objects.filter(job=job).count(), 1)

    def test_rollback_pushes_nothing(self):
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                job = CountingJob.enqueue()
                raise RuntimeError('roll back')
        self.assertFalse(self.in_redis(job))
        self.assertFalse(Job.objects.filter(job_id=job.job_id).exists())
        self.assertFalse(JobDispatch.objects.exists())
        self.assertEqual(get_queue('default').count, 0)

    def test_nested_savepoint_rollback(self):
        with transaction.atomic():
            outer = CountingJob.enqueue()
            try:
                with transaction.atomic():
                    inner = CountingJob.enqueue()
                    raise RuntimeError('roll back the savepoint only')
            except RuntimeError:
                pass
            kept = CountingJob.enqueue()
        self.assertTrue(self.in_redis(outer))
        self.assertTrue(self.in_redis(kept))
        self.assertFalse(self.in_redis(inner))
        self.assertFalse(Job.objects.filter(job_id=inner.job_id).exists())
        self.assertEqual(get_queue('default').count, 2)

    def test_scheduled_job_pushed_on_commit_only(self):
        when = timezone.now() + timedelta(hours=1)
        with transaction.atomic():
            job = CountingJob.enqueue(schedule_at=when)
            self.assertFalse(self.in_redis(job))
        self.assertEqual(job.status, 'scheduled')
        self.assertIn(str(job.job_id), get_queue('default').scheduled_job_registry.get_job_ids())
        self.assertEqual(JobDispatch.objects.get(job=job).method, 'enqueue_at')

    def test_scheduled_job_rolled_back(self):
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                job = CountingJob.enqueue(schedule_at=timezone.now() + timedelta(hours=1))
                raise RuntimeError('roll back')
        self.assertFalse(self.in_redis(job))
        self.assertEqual(get_queue('default').scheduled_job_registry.count, 0)

    def test_immediate_runs_synchronously_untouched(self):
        job = CountingJob.enqueue(immediate=True)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(self.in_redis(job))
        self.assertFalse(JobDispatch.objects.exists())

    def test_enqueue_once(self):
        first = CountingJob.enqueue_once(interval=60)
        second = CountingJob.enqueue_once(interval=60)
        self.assertEqual(first.pk, second.pk)
        self.assertEqual(Job.objects.filter(name=CountingJob.name).count(), 1)
        self.assertEqual(JobDispatch.objects.count(), 1)
        self.assertTrue(self.in_redis(first))

    def test_unserializable_task_fails_before_commit(self):
        with self.assertRaises((pickle.PicklingError, AttributeError, TypeError)):
            with transaction.atomic():
                CountingJob.enqueue(callback=lambda: None)
        self.assertFalse(Job.objects.filter(name=CountingJob.name).exists())
        self.assertFalse(JobDispatch.objects.exists())
        self.assertEqual(get_queue('default').count, 0)

    def test_enqueue_from_another_thread_is_not_captured_here(self):
        """The capture is per thread: a push made by another thread during an enqueue is not taken over."""
        results = {}

        def other():
            results['job'] = CountingJob.enqueue()

        with transaction.atomic():
            CountingJob.enqueue()
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        self.assertTrue(self.in_redis(results['job']))
        self.assertEqual(get_queue('default').count, 2)

    def test_redis_down_at_commit_then_back_runs_once(self):
        with compat.override_rq_queues(closed_port_queues()):
            with transaction.atomic():
                job = CountingJob.enqueue()
            # No exception reached the caller; the data is committed.
        self.assertTrue(Job.objects.filter(pk=job.pk, status='pending').exists())
        self.assertFalse(self.in_redis(job))
        event = RetryEvent.objects.get(kind=RetryEventKindChoices.KIND_DISPATCH_FAILED)
        self.assertEqual(event.job_id, job.pk)
        self.assertEqual(event.job_uuid, job.job_id)
        self.assertIn('ConnectionError', event.detail)
        self.assertTrue(JobDispatch.objects.filter(job=job, payload__isnull=False).exists())

        # Redis is back: the recovery pass pushes the stored dispatch once, the worker runs it once.
        report = run_pass(now=timezone.now() + timedelta(hours=1))
        self.assertEqual(report.pushed, [job.job_id])
        self.assertTrue(self.in_redis(job))
        second = run_pass(now=timezone.now() + timedelta(hours=1))
        self.assertEqual(second.pushed, [])
        self.assertEqual(second.already_queued, 1)
        run_burst_worker()
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        self.assertEqual(RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_RECOVERED).count(), 1)


@override_settings(RQ={'COMMIT_MODE': 'auto'})
class DispatchAutoCommitModeTest(DispatchTestMixin, SafeJobsTransactionTestCase):
    pass


@override_settings(RQ={'COMMIT_MODE': 'on_db_commit'})
class DispatchOnDbCommitModeTest(DispatchTestMixin, SafeJobsTransactionTestCase):
    pass


class DispatchSwitchTest(SafeJobsTransactionTestCase):

    def test_uninstall_restores_netbox(self):
        from netbox.jobs import JobRunner

        patched = JobRunner.__dict__['enqueue']
        patches.uninstall('dispatch')
        try:
            self.assertNotIn('dispatch', patches.installed())
            original = JobRunner.__dict__['enqueue'].__func__
            self.assertIs(patched.__func__.__safejobs_original__, original)
            job = CountingJob.enqueue()
            self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        finally:
            patches.install()
        self.assertIs(JobRunner.__dict__['enqueue'].__func__.__safejobs_original__, original)

    def test_install_is_idempotent(self):
        from netbox.jobs import JobRunner

        before = JobRunner.__dict__['enqueue']
        patches.install()
        self.assertIs(JobRunner.__dict__['enqueue'], before)


class UnsupportedNetBoxTest(SafeJobsTransactionTestCase):
    """When NetBox lacks what a patch needs, the patch logs why once and leaves NetBox as it was."""

    def test_dispatch_not_installed_when_capture_impossible(self):
        from netbox.jobs import JobRunner

        from netbox_safejobs import compat

        patches.uninstall()
        original_enqueue = JobRunner.__dict__['enqueue']
        original_handle = JobRunner.__dict__['handle']
        reason = compat.capture_unsupported_reason
        compat.capture_unsupported_reason = lambda: 'core.models.jobs has no module global django_rq'
        try:
            with self.assertLogs('netbox_safejobs.patches', level='WARNING') as logs:
                installed = patches.install()
            self.assertEqual(installed, {'guard'})
            self.assertIs(JobRunner.__dict__['enqueue'], original_enqueue)
            self.assertIsNot(JobRunner.__dict__['handle'], original_handle)
            self.assertEqual(len(logs.output), 1)
            self.assertIn('On-commit dispatch not installed: core.models.jobs has no module global django_rq',
                          logs.output[0])
            job = CountingJob.enqueue()
            self.assertFalse(JobDispatch.objects.filter(job=job).exists())
            self.assertTrue(RQJob.exists(str(job.job_id), connection=self.redis), 'NetBox no longer pushes')
        finally:
            compat.capture_unsupported_reason = reason
            patches.uninstall()
            patches.install()
        self.assertEqual(patches.installed(), {'dispatch', 'guard'})

    def test_capture_supported_on_this_netbox(self):
        from netbox_safejobs import compat

        self.assertIsNone(compat.capture_unsupported_reason())
        self.assertIsNone(compat.handle_unsupported_reason())

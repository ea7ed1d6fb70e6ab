"""The recovery pass: owed pushes after a crash or a Redis data loss, stuck jobs after a worker died."""

import subprocess
import textwrap
import uuid
from datetime import timedelta
from io import StringIO

from core.models import Job
from django.core.management import call_command
from django.utils import timezone
from django_rq import get_queue
from netbox.registry import registry
from rq.job import Job as RQJob

from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.jobs import RecoveryJob
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.recovery import run_pass

from .base import SafeJobsTransactionTestCase, Worker, netbox_command, run_burst_worker, worker_env
from .jobs import CountingJob, run_count

LATER = timedelta(hours=1)


class RecoveryTest(SafeJobsTransactionTestCase):

    def in_redis(self, job_uuid):
        return RQJob.exists(str(job_uuid), connection=self.redis)

    def test_system_job_registered(self):
        self.assertIn(RecoveryJob, registry['system_jobs'])
        self.assertEqual(registry['system_jobs'][RecoveryJob]['interval'], 5)

    def test_young_dispatch_is_left_alone(self):
        """A push younger than recovery_min_age may still be on its way: never raced."""
        job = CountingJob.enqueue()
        self.redis.flushdb()
        report = run_pass()
        self.assertEqual(report.pushed, [])
        self.assertFalse(self.in_redis(job.job_id))

    def test_process_killed_between_commit_and_push(self):
        """A process SIGKILLed after COMMIT, before its on-commit push: the pass pushes it, it runs once."""
        script = textwrap.dedent("""
            import os, signal
            from django.db import transaction
            from tests.jobs import CountingJob
            with transaction.atomic():
                # Registered before the enqueue, so it runs first after COMMIT: the process dies before the push.
                transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
                job = CountingJob.enqueue()
                print(job.job_id, flush=True)
        """)
        result = subprocess.run(netbox_command('shell', '--command', script), env=worker_env(), capture_output=True,
                                text=True, timeout=120)
        self.assertEqual(result.returncode, -9, result.stderr)
        job_uuid = uuid.UUID(result.stdout.strip().splitlines()[-1])
        job = Job.objects.get(job_id=job_uuid)
        self.assertEqual(job.status, 'pending')
        self.assertFalse(self.in_redis(job_uuid), 'the push happened although the process died first')
        self.assertTrue(JobDispatch.objects.filter(job=job, payload__isnull=False).exists())

        report = run_pass(now=timezone.now() + LATER)
        self.assertEqual(report.pushed, [job_uuid])
        self.assertEqual(run_pass(now=timezone.now() + LATER).pushed, [], 'pushed twice')
        run_burst_worker()
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job_uuid), 1)
        event = RetryEvent.objects.get(kind=Kind.KIND_RECOVERED)
        self.assertEqual(event.job_uuid, job_uuid)
        self.assertEqual(event.attempt, 1)

    def test_redis_restarted_empty_after_push(self):
        job = CountingJob.enqueue()
        self.assertTrue(self.in_redis(job.job_id))
        self.redis.flushdb()  # what a restart without persistence, a FLUSHDB or a failover to an empty replica does
        report = run_pass(now=timezone.now() + LATER)
        self.assertEqual(report.pushed, [job.job_id])
        self.assertTrue(self.in_redis(job.job_id))
        run_burst_worker()
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)

    def test_scheduled_job_lost_by_redis_is_pushed_again(self):
        job = CountingJob.enqueue(schedule_at=timezone.now() + timedelta(hours=2))
        self.redis.flushdb()
        report = run_pass(now=timezone.now() + LATER)
        self.assertEqual(report.pushed, [job.job_id])
        self.assertIn(str(job.job_id), get_queue('default').scheduled_job_registry.get_job_ids())

    def test_recovery_twice_pushes_nothing_the_second_time(self):
        jobs = [CountingJob.enqueue() for _ in range(3)]
        self.redis.flushdb()
        first = run_pass(now=timezone.now() + LATER)
        self.assertEqual(sorted(first.pushed), sorted(j.job_id for j in jobs))
        second = run_pass(now=timezone.now() + LATER)
        self.assertEqual(second.pushed, [])
        self.assertEqual(second.already_queued, 3)
        self.assertEqual(get_queue('default').count, 3)

    def test_dry_run_changes_nothing(self):
        job = CountingJob.enqueue()
        self.redis.flushdb()
        out = StringIO()
        call_command('safejobs_recover', '--dry-run', '-v', '2', stdout=out)
        self.assertIn('would push 0 owed', out.getvalue())  # too young for the pass without --now
        report = run_pass(dry_run=True, now=timezone.now() + LATER)
        self.assertEqual(report.pushed, [job.job_id])
        self.assertFalse(self.in_redis(job.job_id))
        self.assertFalse(RetryEvent.objects.exists())
        self.assertEqual(JobDispatch.objects.get(job=job).recoveries, 0)

    def test_management_command(self):
        job = CountingJob.enqueue()
        self.redis.flushdb()
        JobDispatch.objects.filter(job=job).update(created=timezone.now() - LATER)
        out = StringIO()
        call_command('safejobs_recover', '-v', '2', stdout=out)
        self.assertIn(f'pushed {job.job_id}', out.getvalue())
        self.assertIn('pushed 1 owed job(s)', out.getvalue())
        self.assertTrue(self.in_redis(job.job_id))

    def test_finished_and_deleted_jobs_leave_no_dispatch_rows(self):
        done = CountingJob.enqueue()
        Job.objects.filter(pk=done.pk).update(status='completed')
        gone = CountingJob.enqueue()
        gone.delete()
        self.assertFalse(JobDispatch.objects.filter(job_uuid=gone.job_id).exists(), 'not removed with its Job')
        report = run_pass(now=timezone.now() + LATER)
        self.assertEqual(report.cleaned, 1)
        self.assertEqual(report.pushed, [])
        self.assertFalse(JobDispatch.objects.exists())

    def test_worker_killed_mid_job_is_errored_and_rescheduled(self):
        """The work horse is SIGKILLed mid-run (what the OOM killer does): the Job ends errored, not running."""
        job = CountingJob.enqueue(interval=30, sleep=120)
        worker = Worker('default', burst=False)
        try:
            self.wait_for(lambda: Job.objects.filter(pk=job.pk, status='running', started__isnull=False).exists(),
                          timeout=90, message='job running')
            # Inside run() (it counts itself first): killing earlier would be a different scenario.
            self.wait_for(lambda: run_count(job.job_id) == 1, timeout=30, message='run() entered')
            self.wait_for(lambda: worker.children(), timeout=30, message='work horse')
            lease = JobDispatch.objects.get(job=job)
            self.assertIsNotNone(lease.claimed)
            self.assertIsNotNone(lease.payload, 'a periodic job keeps its push to be rescheduled')
            for pid in worker.children():
                subprocess.run(['kill', '-9', str(pid)], check=False)
            rq_job = get_queue('default').fetch_job(str(job.job_id))
            self.wait_for(lambda: rq_job.get_status(refresh=True) == 'failed', timeout=60, message='RQ task failed')
        finally:
            worker.kill()
        job.refresh_from_db()
        self.assertEqual(job.status, 'running', 'NetBox alone leaves the job running forever')

        # Within the grace period nothing happens; after it, the job is closed.
        self.assertEqual(run_pass().stuck_errored, [])
        report = run_pass(now=timezone.now() + timedelta(hours=2))
        self.assertEqual(report.stuck_errored, [job.job_id])
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored')
        self.assertIn('stopped without finishing', job.error)
        self.assertIsNotNone(job.completed)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        event = RetryEvent.objects.get(kind=Kind.KIND_STUCK_ERRORED)
        self.assertEqual(event.job_id, job.pk)
        self.assertIn('Next run scheduled', event.detail)
        successor = Job.objects.get(name=CountingJob.name, status='scheduled')
        self.assertEqual(successor.interval, 30)
        self.assertTrue(self.in_redis(successor.job_id))
        self.assertEqual(run_count(job.job_id), 1)
        self.assertEqual(run_pass(now=timezone.now() + timedelta(hours=2)).stuck_errored, [])

    def test_running_job_with_live_worker_is_left_alone(self):
        job = CountingJob.enqueue(sleep=30)
        worker = Worker('default', burst=False)
        try:
            self.wait_for(lambda: Job.objects.filter(pk=job.pk, status='running').exists(), timeout=90,
                          message='job running')
            report = run_pass(now=timezone.now() + timedelta(hours=2))
            self.assertEqual(report.stuck_errored, [])
            self.assertEqual(report.still_running, 1)
        finally:
            worker.kill()


class WorkerStartupRecoveryTest(SafeJobsTransactionTestCase):

    def test_system_jobs_come_back_after_redis_lost_its_data(self):
        """A worker start-up re-sends owed pushes, including the scheduled system jobs' own tasks."""
        run_burst_worker()  # schedules (and runs) the system jobs once, as any worker start does
        scheduled = Job.objects.filter(name=RecoveryJob.name, status='scheduled').get()
        self.assertTrue(RQJob.exists(str(scheduled.job_id), connection=self.redis))
        stranded = CountingJob.enqueue()
        self.redis.flushdb()
        JobDispatch.objects.update(created=timezone.now() - LATER)
        run_burst_worker()
        self.assertTrue(RQJob.exists(str(scheduled.job_id), connection=self.redis), 'recovery job not re-sent')
        stranded.refresh_from_db()
        self.assertEqual(stranded.status, 'completed')
        self.assertEqual(run_count(stranded.job_id), 1)


class DeadTaskRecoveryTest(SafeJobsTransactionTestCase):

    def test_task_failed_before_start_is_sent_again(self):
        """The guard gave the task up to RQ during a database outage: the job still waits, so it is re-sent."""
        from rq.job import JobStatus

        job = CountingJob.enqueue()
        rq_job = get_queue('default').fetch_job(str(job.job_id))
        rq_job.set_status(JobStatus.FAILED)
        get_queue('default').remove(rq_job)
        report = run_pass(now=timezone.now() + LATER)
        self.assertEqual(report.pushed, [job.job_id])
        self.assertIn('RQ task failed before the job started', RetryEvent.objects.get(kind=Kind.KIND_RECOVERED).detail)
        run_burst_worker()
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)

    def test_task_failing_over_and_over_is_not_resent_forever(self):
        from rq.job import JobStatus

        from netbox_safejobs.recovery import MAX_DEAD_TASK_RECOVERIES

        job = CountingJob.enqueue()
        JobDispatch.objects.filter(job=job).update(recoveries=MAX_DEAD_TASK_RECOVERIES)
        get_queue('default').fetch_job(str(job.job_id)).set_status(JobStatus.FAILED)
        report = run_pass(now=timezone.now() + LATER)
        self.assertEqual(report.pushed, [])
        self.assertEqual(report.already_queued, 1)

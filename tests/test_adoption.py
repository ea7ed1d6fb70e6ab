"""
Adoption of what NetBox left without the plugin: jobs enqueued, run or left running by stock code paths (the plugin's
patches removed in this process, workers with every switch off), then a guarded worker's start-up or
`netbox safejobs_recover --adopt`. Real workers, real PostgreSQL and Redis.
"""

import io
import os
import signal
import threading
from datetime import timedelta

from core.models import Job
from django.core.management import call_command
from django.db import connections
from django.test import override_settings
from rq.job import Job as RQJob

from netbox_safejobs import adoption
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.jobs import EventRetentionJob
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.payload import Push, unseal
from netbox_safejobs.recovery import run_pass
from netbox_safejobs.testing.fixtures import set_mode
from netbox_safejobs.testing.queues import closed_port_queues, override_rq_queues

from .base import SafeJobsTransactionTestCase, Worker, run_burst_worker, worker_env
from .jobs import CountingJob, run_count

# A worker without any of the plugin's patches: what stock NetBox runs.
STOCK = {'dispatch_on_commit': False, 'worker_guard': False, 'worker_loop': False, 'stuck_job_detection': False}
# The plugin, with heartbeats every second.
LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10, 'relay_interval': 0.5, 'unknown_push_age': 1}


def stock_enqueue(runner, **kwargs):
    """Enqueue as NetBox does without the plugin: the Job row and its task, no dispatch row."""
    set_mode('stock')
    try:
        return runner.enqueue(**kwargs)
    finally:
        set_mode('plugin')


def backdate(*jobs):
    """Saved a minute ago, as what NetBox left before the plugin was: older than unknown_push_age."""
    for job in jobs:
        Job.objects.filter(pk=job.pk).update(created=job.created - timedelta(minutes=1))


def task_of(job, connection):
    return RQJob.fetch(str(job.job_id), connection=connection)


class AdoptionTestMixin:

    def stock_worker(self):
        worker = Worker('default', burst=False, plugins_config=STOCK)
        self.addCleanup(worker.kill)
        return worker

    def plugin_worker(self):
        worker = Worker('default', burst=False, env=worker_env(LIVELY))
        self.addCleanup(worker.kill)
        return worker

    def forget_rq_worker(self, name):
        """What RQ's registry does once a dead worker's key expires (``worker_ttl``, 420 s by default)."""
        from rq.worker import Worker as RQWorker

        self.redis.delete(RQWorker.redis_worker_namespace_prefix + name)

    def left_running_by_a_dead_stock_worker(self, **kwargs):
        """A job a stock worker started, then SIGKILLed with its work horse: running for good, its worker gone."""
        job = stock_enqueue(CountingJob, sleep=120, **kwargs)
        worker = self.stock_worker()
        self.wait_for(lambda: run_count(job.job_id) == 1, timeout=90, message='the stock worker ran the job')
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'running', timeout=30, message='job running')
        self.wait_for(lambda: worker.children(), timeout=30, message='work horse')
        # RQ's work horse runs in a session of its own: killed by its pid, with its worker (a host lost).
        horses = worker.children()
        os.kill(worker.pid, signal.SIGKILL)
        for pid in horses:
            os.kill(pid, signal.SIGKILL)
        worker.kill()
        task = task_of(job, self.redis)
        self.assertEqual(task.get_status(refresh=False), 'started')
        self.forget_rq_worker(task.worker_name)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        backdate(job)
        return job


class AdoptionTest(AdoptionTestMixin, SafeJobsTransactionTestCase):

    def test_running_job_left_by_a_dead_stock_worker_is_closed_by_a_starting_worker(self):
        """
        The worker that ran it is gone and RQ forgot it: the first start of a guarded worker closes the job as NetBox's
        handle() closes a failed run, and schedules its next run once, with its arguments.
        """
        job = self.left_running_by_a_dead_stock_worker(interval=30)
        self.plugin_worker()
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'errored', timeout=60, message='job closed')
        job.refresh_from_db()
        self.assertIn('Left running by NetBox without the plugin', job.error)
        self.assertIsNotNone(job.completed)
        event = RetryEvent.objects.get(job_uuid=job.job_id)
        self.assertEqual(event.kind, Kind.KIND_ADOPTED)
        self.assertIn('which ran it, is gone', event.detail)
        self.assertIn('next run of this periodic job is scheduled', event.detail)
        self.wait_for(lambda: Job.objects.filter(name=CountingJob.name, status='scheduled').exists(), timeout=10,
                      message='next run')
        successor = Job.objects.get(name=CountingJob.name, status='scheduled')
        self.assertEqual(unseal(JobDispatch.objects.get(job=successor).payload).kwargs.get('sleep'), 120)
        self.assertEqual(Job.objects.filter(name=CountingJob.name, status__in=('pending', 'scheduled')).count(), 1)
        self.assertEqual(run_count(job.job_id), 1)
        # Decided once: a second pass finds nothing to adopt.
        self.assertEqual(adoption.adopt().adopted, 0)
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_ADOPTED, job_uuid=job.job_id).count(), 1)

    def test_running_job_of_a_live_stock_worker_is_left_alone(self):
        """During a rolling upgrade a stock worker still runs a job: RQ vouches for it, adoption does not touch it."""
        job = stock_enqueue(CountingJob, sleep=6)
        self.stock_worker()
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'running', timeout=90, message='job running')
        backdate(job)
        report = adoption.adopt()
        self.assertEqual(report.vouched, [job.job_id])
        self.assertEqual((report.adopted, report.listed), (0, []))
        self.assertFalse(report.settled, 'a vouched-for job is looked at again later')
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'completed', timeout=60, message='job finished')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(RetryEvent.objects.exists())

    def test_pending_job_with_its_task_in_redis_is_covered_and_runs_once(self):
        job = stock_enqueue(CountingJob)
        backdate(job)
        report = adoption.adopt()
        self.assertEqual(report.covered, [job.job_id])
        row = JobDispatch.objects.get(job=job)
        self.assertEqual(row.state, 'sent')
        push = unseal(row.payload)
        self.assertIsInstance(push, Push)
        self.assertEqual((push.method, push.kwargs['job_id']), ('enqueue', str(job.job_id)))
        event = RetryEvent.objects.get(job_uuid=job.job_id)
        self.assertEqual(event.kind, Kind.KIND_ADOPTED)
        self.assertIn('its task is in Redis (queued)', event.detail)
        # Covered from now on: Redis loses the task, the relay sends it again from the stored push.
        self.redis.flushdb()
        self.assertEqual(run_pass().reowed, 1)
        self.assertTrue(task_of(job, self.redis))
        run_burst_worker('default')
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())

    def test_pending_system_job_whose_task_redis_lost_is_rebuilt_and_runs_once(self):
        """NetBox #22714's case: a system job's waiting row without a task in Redis; nothing would ever run it."""
        job = stock_enqueue(EventRetentionJob, interval=60 * 24)
        self.redis.flushdb()
        backdate(job)
        report = adoption.adopt()
        self.assertEqual(report.rebuilt, [job.job_id])
        self.assertEqual(JobDispatch.objects.get(job=job).state, 'owed')
        self.assertIn("Rebuilt from NetBox's registry of system jobs",
                      RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_ADOPTED).detail)
        self.assertEqual(run_pass().pushed, [job.job_id])
        run_burst_worker('default')
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(job.data, {'deleted': 0})
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_DUPLICATE_SKIPPED).exists())
        # Its next run, once.
        self.assertEqual(Job.objects.filter(name=EventRetentionJob.name, status='scheduled').count(), 1)

    def test_pending_job_whose_arguments_redis_lost_is_listed_not_run(self):
        """A job whose runner and arguments were only in its task: listed once with the reason, never sent."""
        job = stock_enqueue(CountingJob, sleep=1)
        self.redis.flushdb()
        backdate(job)
        report = adoption.adopt()
        self.assertEqual([uuid for uuid, _reason in report.listed], [job.job_id])
        self.assertIn('only in the task Redis lost', report.listed[0][1])
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        event = RetryEvent.objects.get(job_uuid=job.job_id)
        self.assertEqual(event.kind, Kind.KIND_NOT_ADOPTED)
        adoption.adopt()
        self.assertEqual(RetryEvent.objects.filter(job_uuid=job.job_id).count(), 1, 'listed twice')
        run_burst_worker('default')
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'pending')
        self.assertEqual(run_count(job.job_id), 0)
        # The health check counts it for the operator.
        from netbox_safejobs import health

        finding = next(f for f in health.check().findings if f.check == 'adoption')
        self.assertEqual((finding.level, finding.data['uncovered'], finding.data['not_adopted']),
                         ('warning', {'pending': 1}, 1))

    def test_task_failed_before_the_job_started_is_sent_again_from_the_task(self):
        """A waiting job whose task RQ failed (a database blip in a stock worker): rebuilt from the task itself."""
        from django_rq import get_queue

        job = stock_enqueue(CountingJob, sleep=0)
        task = task_of(job, self.redis)
        get_queue('default').remove(task)
        task.set_status('failed')
        backdate(job)
        report = adoption.adopt()
        self.assertEqual(report.rebuilt, [job.job_id])
        self.assertIn('Rebuilt from its task', RetryEvent.objects.get(job_uuid=job.job_id).detail)
        run_pass()
        run_burst_worker('default')
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)

    def test_dry_run_changes_nothing(self):
        running = self.left_running_by_a_dead_stock_worker()
        queued = stock_enqueue(CountingJob)
        lost = stock_enqueue(EventRetentionJob, interval=60 * 24)
        self.redis.delete(RQJob.key_for(str(lost.job_id)))
        backdate(queued, lost)
        out = io.StringIO()
        call_command('safejobs_recover', '--adopt', '--dry-run', '-v', '2', stdout=out)
        text = out.getvalue()
        self.assertIn(f'would close {running.job_id}', text)
        self.assertIn(f'would cover {queued.job_id}', text)
        self.assertIn(f'would rebuild and send {lost.job_id}', text)
        self.assertFalse(JobDispatch.objects.exists())
        self.assertFalse(RetryEvent.objects.exists())
        self.assertEqual(Job.objects.get(pk=running.pk).status, 'running')
        # Then for real.
        call_command('safejobs_recover', '--adopt', stdout=io.StringIO())
        self.assertEqual(Job.objects.get(pk=running.pk).status, 'errored')
        self.assertEqual(JobDispatch.objects.count(), 2)
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_ADOPTED).count(), 3)

    def test_nothing_is_decided_while_redis_is_away(self):
        job = stock_enqueue(CountingJob)
        backdate(job)
        with override_rq_queues(closed_port_queues()):
            report = adoption.adopt_and_merge()
        self.assertTrue(report.redis_down)
        self.assertFalse(report.settled)
        self.assertFalse(JobDispatch.objects.exists())
        self.assertFalse(RetryEvent.objects.exists())

    def test_recent_jobs_are_left_for_a_later_pass(self):
        job = stock_enqueue(CountingJob)
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': {'unknown_push_age': 3600}}):
            report = adoption.adopt()
        self.assertEqual((report.deferred, report.adopted), (1, 0))
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())

    def test_passes_at_once_adopt_each_job_once(self):
        """Workers starting together: each job is adopted by one of them, one event each."""
        jobs = [stock_enqueue(CountingJob) for _ in range(20)]
        backdate(*jobs)
        reports, errors = [], []

        def one_pass():
            try:
                reports.append(adoption.adopt())
            except Exception as e:  # pragma: no cover - reported by the assertion below
                errors.append(e)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=one_pass) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])
        covered = [job_uuid for report in reports for job_uuid in report.covered]
        self.assertCountEqual(covered, [job.job_id for job in jobs])
        self.assertEqual(JobDispatch.objects.count(), 20)
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_ADOPTED).count(), 20)

    def test_claimed_jobs_and_the_plugins_own_are_not_candidates(self):
        own = CountingJob.enqueue()
        backdate(own)
        report = adoption.adopt()
        self.assertEqual((report.adopted, report.listed, report.deferred), (0, [], 0))
        self.assertEqual(JobDispatch.objects.get(job=own).state, 'sent')
        self.assertFalse(RetryEvent.objects.exists())

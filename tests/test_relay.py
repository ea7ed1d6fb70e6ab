"""
Delivery from the database: the relay in every worker, `netbox safejobs_recover`, Redis outages and data loss, and
concurrent relays. Real PostgreSQL, real Redis servers that are stopped, flushed and restarted, real workers.
"""

import signal
import subprocess
import textwrap
import time
import uuid
from datetime import timedelta

from core.models import Job
from django.db import connection, transaction
from django.db.models import F
from rq.job import Job as RQJob

from netbox_safejobs import relay
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.queues import get_push_queue
from netbox_safejobs.recovery import run_pass
from netbox_safejobs.testing.queues import closed_port_queues, override_rq_queues, queues_on, silent_port

from .base import (
    PrivateRedisTestCase,
    SafeJobsTransactionTestCase,
    netbox_command,
    run_burst_worker,
    worker_env,
)
from .jobs import CountingJob, run_count


class RelayTest(SafeJobsTransactionTestCase):

    def in_redis(self, job_uuid):
        return RQJob.exists(str(job_uuid), connection=self.redis)

    def test_process_killed_between_commit_and_push(self):
        """A process SIGKILLed after COMMIT, before its push: owed after unknown_push_age, sent once, run once."""
        relay.check_redis(relay.RelayReport())  # the relay's marker, as a running worker keeps it
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
        self.assertEqual(JobDispatch.objects.get(job=job).state, 'written')

        # Younger than unknown_push_age (by the database's clock): its process may still be pushing it.
        self.assertEqual(run_pass().pushed, [])
        JobDispatch.objects.filter(job=job).update(created=connection_now() - _seconds(11))
        self.assertEqual(run_pass().pushed, [job_uuid])
        self.assertEqual(run_pass().pushed, [], 'pushed twice')
        run_burst_worker()
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job_uuid), 1)
        event = RetryEvent.objects.get(kind=Kind.KIND_RECOVERED)
        self.assertEqual(event.job_uuid, job_uuid)
        self.assertIn('died before pushing', event.detail)

    def test_redis_flushed_sends_lost_tasks_once(self):
        """Redis lost its data without an outage (FLUSHDB, failover to an empty replica): lost tasks owed again."""
        relay.check_redis(relay.RelayReport())  # the relay's marker, as a running worker keeps it
        lost = CountingJob.enqueue()
        scheduled = CountingJob.enqueue(schedule_at=connection_now() + _seconds(3600))
        self.redis.flushdb()
        kept = CountingJob.enqueue()  # pushed after the loss: Redis holds it
        report = run_pass()
        self.assertEqual(report.reowed, 2)
        self.assertEqual(sorted(report.pushed), sorted([lost.job_id, scheduled.job_id]))
        self.assertIn(str(scheduled.job_id), get_push_queue('default').scheduled_job_registry.get_job_ids())
        self.assertEqual(run_pass().pushed, [])
        run_burst_worker()
        for job in (lost, kept):
            self.assertEqual(run_count(job.job_id), 1)
            self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_DUPLICATE_SKIPPED).exists())

    def test_task_failed_before_its_claim_is_sent_again(self):
        """
        Sent is not safe: a worker took the task while the database was away and RQ failed it before the claim. The
        row is still sent; the sweep owes it again, the relay sends it, it runs once, and RQ's failed registry lets
        it go.
        """
        from rq.registry import FailedJobRegistry

        relay.check_redis(relay.RelayReport())
        failed, queued = CountingJob.enqueue(), CountingJob.enqueue()
        queue = get_push_queue('default')
        task = queue.fetch_job(str(failed.job_id))
        queue.remove(task)
        registry = FailedJobRegistry(queue=queue)
        registry.add(task, exc_string='OperationalError: the database was away')
        task.set_status('failed')
        self.assertEqual(JobDispatch.objects.get(job=failed).state, 'sent')
        report = run_pass()
        self.assertEqual(report.reowed, 1)
        self.assertEqual(report.pushed, [failed.job_id])
        self.assertNotIn(str(failed.job_id), registry.get_job_ids())
        self.assertEqual(run_pass().pushed, [], 'sent twice')
        run_burst_worker()
        for job in (failed, queued):
            self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
            self.assertEqual(run_count(job.job_id), 1)

    def test_a_task_dropped_on_its_way_to_a_worker_is_sent_again(self):
        """
        A worker stopped between RQ's BLPOP and its start of the task (a SIGTERM: RQ's warm shutdown ends an idle
        worker's loop at once) leaves the task "queued" in no queue, for ever. Once the row was sent
        ``DROPPED_TASK_AGE`` ago the sweep owes it again; a task as old that its queue still holds is left alone, and
        so is a dropped one sent more recently.
        """
        relay.check_redis(relay.RelayReport())
        dropped, waiting, recent = CountingJob.enqueue(), CountingJob.enqueue(), CountingJob.enqueue()
        queue = get_push_queue('default')
        for job in (dropped, recent):
            self.assertEqual(self.redis.lrem(queue.key, 0, str(job.job_id)), 1)  # what the worker's BLPOP took
        JobDispatch.objects.filter(job__in=[dropped, waiting]).update(
            sent=F('sent') - timedelta(seconds=relay.DROPPED_TASK_AGE + 1))
        self.assertEqual(queue.fetch_job(str(dropped.job_id)).get_status(), 'queued')

        self.assertEqual(run_pass().pushed, [dropped.job_id])
        self.assertEqual(run_pass().pushed, [], 'sent twice')
        run_burst_worker()
        for job in (dropped, waiting):
            self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
            self.assertEqual(run_count(job.job_id), 1)
        self.assertEqual(Job.objects.get(pk=recent.pk).status, 'pending')

    def test_a_task_whose_work_horse_died_before_its_claim_is_sent_again(self):
        """
        A worker SIGKILLed (with its work horse) while the horse's claim waited for the database leaves the task
        "started" in RQ, for RQ to fail only after its timeout at a maintenance, and the job pending. Once the row was
        sent ``stuck_after`` ago the sweep owes it again; a started task whose job runs is left alone.
        """
        from netbox_safejobs.settings import get_settings

        relay.check_redis(relay.RelayReport())
        orphan, running = CountingJob.enqueue(), CountingJob.enqueue()
        queue = get_push_queue('default')
        for job in (orphan, running):
            queue.remove(str(job.job_id))
            queue.fetch_job(str(job.job_id)).set_status('started')
        Job.objects.filter(pk=running.pk).update(status='running')
        JobDispatch.objects.filter(job__in=[orphan, running]).update(
            sent=F('sent') - timedelta(seconds=get_settings().stuck_after + 1))

        self.assertEqual(run_pass().pushed, [orphan.job_id])
        self.assertEqual(run_pass().pushed, [], 'sent twice')
        run_burst_worker()
        self.assertEqual(Job.objects.get(pk=orphan.pk).status, 'completed')
        self.assertEqual(run_count(orphan.job_id), 1)
        self.assertEqual(run_count(running.job_id), 0)
        self.assertEqual(JobDispatch.objects.get(job=running).state, 'sent')

    def test_a_task_that_always_fails_before_its_claim_is_given_up(self):
        """
        Sent again on a backoff, each time with its failure taken out of RQ's failed registry; after the last, the
        job is closed as errored with RQ's reason, one ``gave up`` event, and RQ keeps its record of that failure.
        """
        from rq.registry import FailedJobRegistry

        relay.check_redis(relay.RelayReport())
        job = CountingJob.enqueue()
        queue = get_push_queue('default')
        registry = FailedJobRegistry(queue=queue)

        def fail_before_claim():
            task = queue.fetch_job(str(job.job_id))
            queue.remove(task)
            registry.add(task, exc_string='Traceback ...\nValueError: the task cannot be read')
            task.set_status('failed')

        sends = len(relay.FAILED_TASK_DELAYS)
        for attempt in range(sends):
            fail_before_claim()
            if relay.FAILED_TASK_DELAYS[attempt]:
                # Not before its wait: the row stays sent, its failure in RQ's registry.
                self.assertEqual(run_pass().pushed, [], f'sent again before its backoff (attempt {attempt + 1})')
                self.assertIn(str(job.job_id), registry.get_job_ids())
                JobDispatch.objects.filter(job=job).update(sent=F('sent') - timedelta(hours=1))
            self.assertEqual(run_pass().pushed, [job.job_id], f'attempt {attempt + 1}')
            self.assertNotIn(str(job.job_id), registry.get_job_ids())
        self.assertEqual(JobDispatch.objects.get(job=job).failures, sends)
        fail_before_claim()
        JobDispatch.objects.filter(job=job).update(sent=F('sent') - timedelta(hours=1))
        report = run_pass()
        self.assertEqual((report.pushed, report.reowed), ([], 0))
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored')
        self.assertIn(f'failed in RQ before a worker could claim it, {sends + 1} times', job.error)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        (event,) = RetryEvent.objects.filter(kind=Kind.KIND_GAVE_UP)
        self.assertEqual((event.job_id, event.attempt), (job.pk, sends + 1))
        self.assertIn(str(job.job_id), registry.get_job_ids(), "RQ's record of the last failure was erased")
        self.assertEqual(run_pass().pushed, [])
        self.assertEqual(run_count(job.job_id), 0)

    def test_silent_redis_is_given_up_after_five_seconds(self):
        """A Redis that accepts and never answers (hung, blackholed): the relay gives it up as the enqueue does."""
        with silent_port() as port, override_rq_queues(queues_on(port)):
            started = time.monotonic()
            report = relay.send_owed(sweep=True)
            elapsed = time.monotonic() - started
        self.assertTrue(report.redis_down)
        self.assertLess(elapsed, 8)

    def test_bad_stored_push_errors_its_job_and_blocks_nothing(self):
        with override_rq_queues(closed_port_queues()):
            bad = CountingJob.enqueue()
            truncated = CountingJob.enqueue()
            good = CountingJob.enqueue()
        row = JobDispatch.objects.get(job=bad)
        blob = bytes(row.payload)
        JobDispatch.objects.filter(job=bad).update(payload=blob[:-1] + bytes([blob[-1] ^ 1]))
        JobDispatch.objects.filter(job=truncated).update(payload=blob[:8])
        report = run_pass()
        self.assertEqual(report.pushed, [good.job_id])
        self.assertEqual(sorted(report.rejected), sorted([bad.job_id, truncated.job_id]))
        for job, reason in ((bad, 'bad signature'), (truncated, 'truncated')):
            job.refresh_from_db()
            self.assertEqual(job.status, 'errored')
            self.assertIn(reason, job.error)
            self.assertFalse(self.in_redis(job.job_id))
            event = RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_PAYLOAD_REJECTED)
            self.assertIn(reason, event.detail)
        self.assertFalse(JobDispatch.objects.filter(job__in=[bad, truncated]).exists())

    def test_dry_run_changes_nothing(self):
        with override_rq_queues(closed_port_queues()):
            job = CountingJob.enqueue()
        report = run_pass(dry_run=True)
        self.assertEqual(report.pushed, [job.job_id])
        self.assertIn('would push 1 owed job(s)', report.summary())
        self.assertEqual(JobDispatch.objects.get(job=job).state, 'owed')
        self.assertFalse(self.in_redis(job.job_id))

    def test_management_command(self):
        with override_rq_queues(closed_port_queues()):
            job = CountingJob.enqueue()
        result = subprocess.run(netbox_command('safejobs_recover', '-v', '2'), env=worker_env(), capture_output=True,
                                text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f'pushed {job.job_id}', result.stdout)
        self.assertIn('pushed 1 owed job(s)', result.stdout)
        self.assertTrue(self.in_redis(job.job_id))

    def test_finished_jobs_leave_no_dispatch_rows(self):
        with override_rq_queues(closed_port_queues()):
            done = CountingJob.enqueue()
        Job.objects.filter(pk=done.pk).update(status='completed')
        report = run_pass()
        self.assertEqual(report.pushed, [])
        self.assertEqual(report.cleaned, 1)
        self.assertFalse(JobDispatch.objects.exists())

    def test_concurrent_relays_send_each_push_once(self):
        """4 relays in 4 processes at once over 200 owed pushes: each task reaches Redis exactly once."""
        with override_rq_queues(closed_port_queues()):
            with transaction.atomic():
                jobs = [CountingJob.enqueue() for _ in range(200)]
        self.assertEqual(JobDispatch.objects.filter(owed__isnull=False).count(), 200)
        relay.check_redis(relay.RelayReport())
        # Count every push that reaches Redis: RQ adds each to the queue list, even a duplicate job id.
        processes = [subprocess.Popen(netbox_command('safejobs_recover'), env=worker_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=180)[0] for p in processes]
        self.assertTrue(all(p.returncode == 0 for p in processes), outputs)
        queued = get_push_queue('default').get_job_ids()
        self.assertEqual(len(queued), 200)
        self.assertEqual(set(queued), {str(job.job_id) for job in jobs})
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_RECOVERED).count(), 200)
        self.assertFalse(JobDispatch.objects.filter(sent__isnull=True).exists())


def connection_now():
    with connection.cursor() as cursor:
        cursor.execute('SELECT clock_timestamp()')
        return cursor.fetchone()[0]


def _seconds(n):
    from datetime import timedelta

    return timedelta(seconds=n)


class RelayInWorkerTest(PrivateRedisTestCase):
    """The relay inside a running rqworker: no cron, no system job, no worker restart."""

    def end_outage(self, worker, jobs, bound=2.5):
        """
        Start Redis again (empty); every job completes, once, the worker never having exited, and each started within
        ``bound`` seconds of Redis answering (wall clock of this host, as ``Job.started``): about two seconds, the
        relay's interval and the worker's reconnect, with room for a machine whose every core runs a test process.
        """
        self.server.start()
        back = time.time()
        try:
            self.wait_for(lambda: self.completed(jobs), timeout=30, interval=0.05, message='every job completed')
        except AssertionError:
            worker.kill(signal.SIGTERM)
            raise AssertionError(f'not every job completed:\n{worker.output[-5000:]}') from None
        self.assertIsNone(worker.process.poll(), 'the worker exited')
        starts = Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list('started', flat=True)
        last = max(started.timestamp() for started in starts) - back
        if last > bound:
            worker.kill(signal.SIGTERM)
            self.fail(f'the last job started {last:.2f}s after Redis answered again:\n{worker.output[-6000:]}')
        self.assertEqual([run_count(job.job_id) for job in jobs], [1] * len(jobs))

    def test_redis_outage_jobs_run_within_two_seconds_of_redis_back(self):
        worker = self.worker()
        warm = CountingJob.enqueue()
        self.wait_for(lambda: self.completed([warm]), timeout=60, message='worker ready')
        self.server.stop()
        jobs = [CountingJob.enqueue() for _ in range(10)]  # Redis down: no error, each row owed at once
        owed = JobDispatch.objects.filter(owed__isnull=False)
        self.assertEqual(owed.filter(job__in=jobs).count(), 10,
                         list(owed.values_list('job__name', 'job__status', 'sent', 'owed', 'claimed')))
        time.sleep(2)
        self.end_outage(worker, jobs)
        # One event per failed push of this test (a periodic system job rescheduled by the worker meanwhile may add
        # its own).
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_DISPATCH_FAILED,
                                                   job_uuid__in=[job.job_id for job in jobs]).count(), 10)
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_DUPLICATE_SKIPPED).exists())

    def test_redis_restored_from_an_older_snapshot(self):
        """
        Redis restarted from a snapshot taken before 20 pushes: its marker survived, the 20 tasks did not. Every job
        runs once, within 5 s of a worker's first heartbeat.
        """
        from netbox_safejobs.models import WorkerHeartbeat

        worker = self.worker()
        warm = CountingJob.enqueue()
        self.wait_for(lambda: self.completed([warm]), timeout=60, message='worker ready')
        worker.kill(signal.SIGTERM)
        client = get_push_queue('default').connection
        self.assertIsNotNone(client.get(relay.EPOCH_KEY), 'the relay keeps its marker')
        client.save()  # the snapshot: the marker, none of the jobs below
        jobs = [CountingJob.enqueue() for _ in range(20)]
        self.assertEqual(JobDispatch.objects.filter(job__in=jobs, sent__isnull=False).count(), 20)
        self.server.stop()  # SIGKILL: no save on the way out
        self.server.start()
        self.assertIsNotNone(client.get(relay.EPOCH_KEY), 'the snapshot lost the marker')
        self.assertEqual([job for job in jobs if RQJob.exists(str(job.job_id), connection=client)], [],
                         'the snapshot holds tasks of the jobs pushed after it')
        self.worker()
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='worker heartbeat')
        started = WorkerHeartbeat.objects.get().started.timestamp()
        self.wait_for(lambda: self.completed(jobs), timeout=60, message='every job completed')
        starts = Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list('started', flat=True)
        self.assertLess(max(s.timestamp() for s in starts) - started, 5)
        self.assertEqual([run_count(job.job_id) for job in jobs], [1] * 20)
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_DUPLICATE_SKIPPED).exists())

    def test_redis_restored_under_a_running_worker_is_swept_at_once(self):
        """
        The same restore while a worker keeps running: its loop sees Redis come back as another server (a new
        ``run_id``) and sweeps at once, not at the backstop's next turn. Scheduled jobs, so that the worker cannot run
        them first: each task is back in Redis within 5 s of Redis answering, sent once more, not run.
        """
        from datetime import timedelta

        from django.utils import timezone

        worker = self.worker()
        warm = CountingJob.enqueue()
        self.wait_for(lambda: self.completed([warm]), timeout=60, message='worker ready')
        time.sleep(1.5)  # past the loop's first sweep
        client = get_push_queue('default').connection
        client.save()
        jobs = [CountingJob.enqueue(schedule_at=timezone.now() + timedelta(hours=1)) for _ in range(5)]
        self.assertEqual(JobDispatch.objects.filter(job__in=jobs, sent__isnull=False).count(), 5)
        self.server.stop()
        self.server.start()
        back = time.monotonic()
        self.assertEqual([job for job in jobs if RQJob.exists(str(job.job_id), connection=client)], [])
        self.wait_for(lambda: all(RQJob.exists(str(job.job_id), connection=client) for job in jobs), timeout=20,
                      interval=0.1, message='every task back in Redis')
        self.assertLess(time.monotonic() - back, 5, 'not swept within 5 s of Redis answering')
        self.assertIsNone(worker.process.poll(), 'the worker exited')
        # The relay records its events right after its pushes commit: they may follow the tasks by a moment.
        self.wait_for(lambda: RetryEvent.objects.filter(kind=Kind.KIND_RECOVERED,
                                                        job_uuid__in=[job.job_id for job in jobs]).count() == 5,
                      timeout=5, message='one recovered event per task')
        self.assertEqual([run_count(job.job_id) for job in jobs], [0] * 5)

    def test_worker_busy_when_redis_goes_away_keeps_working(self):
        # RQ ends its work loop when Redis goes away while it runs a job (the end of the job is written to Redis),
        # and `netbox rqworker` exits. The plugin resumes RQ's loop once Redis answers, in the same process.
        from django_rq import get_connection
        from rq.worker import Worker as RQWorker

        worker = self.worker()
        warm = CountingJob.enqueue()
        self.wait_for(lambda: self.completed([warm]), timeout=60, message='worker ready')
        busy = CountingJob.enqueue(sleep=2)
        self.wait_for(lambda: run_count(busy.job_id) == 1, timeout=30, interval=0.02, message='the slow job running')
        self.server.stop()
        self.wait_for(lambda: self.completed([busy]), timeout=30, message='the slow job completed in the database')
        # Down longer than redis-py's retries (3.6 s by default; the plugin shortens the worker's), as in a restart:
        # RQ's worker fails to record itself idle and leaves its loop.
        time.sleep(5)
        jobs = [CountingJob.enqueue() for _ in range(5)]
        self.end_outage(worker, jobs)
        # Registered with RQ again, and stopped as RQ stops a worker.
        self.assertEqual(len(RQWorker.all(connection=get_connection('default'))), 1)
        worker.kill(signal.SIGTERM)
        self.assertIsNotNone(worker.process.returncode)
        self.assertIn('work loop resumed', worker.output)

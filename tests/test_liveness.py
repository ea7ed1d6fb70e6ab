"""
Liveness from the database: heartbeats, dead work horses and workers, and never a live job closed. Real workers,
real PostgreSQL and Redis; processes are killed with SIGKILL, Redis is flushed under a running job.
"""

import os
import signal
import subprocess
import threading
import time
import uuid

from core.models import Job
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from netbox_safejobs import compat, liveness, workers
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.models import JobDispatch, RetryEvent, WorkerHeartbeat
from netbox_safejobs.recovery import run_pass

from .base import LIVELY, RunningJobTestCase, SafeJobsTransactionTestCase, netbox_command, worker_env
from .jobs import CountingJob, run_count


class LivenessTest(RunningJobTestCase):

    def test_worker_announces_itself_and_heartbeats(self):
        worker = self.start_worker()
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='heartbeat row')
        row = WorkerHeartbeat.objects.get()
        self.assertEqual(row.pid, worker.pid)
        self.assertTrue(row.version)
        first = row.seen
        self.wait_for(lambda: WorkerHeartbeat.objects.get().seen > first, timeout=10, message='heartbeat refreshed')
        worker.kill(signal.SIGTERM)
        self.assertFalse(WorkerHeartbeat.objects.exists(), 'a cleanly stopped worker left its heartbeat')

    def test_killed_work_horse_is_closed_at_once_and_rescheduled(self):
        """The work horse is SIGKILLed mid-run (what the OOM killer does): the job is closed within seconds."""
        job = CountingJob.enqueue(interval=30, sleep=120)
        worker = self.start_worker()
        lease = self.wait_running(job, worker)
        self.assertIsNotNone(lease.payload, 'a periodic job keeps its next run')
        killed = time.monotonic()
        for pid in worker.children():
            os.kill(pid, signal.SIGKILL)
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'errored', timeout=30, message='job closed')
        self.assertLess(time.monotonic() - killed, 10)
        job.refresh_from_db()
        self.assertIn('work horse running this job died', job.error)
        self.assertIsNotNone(job.completed)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        event = RetryEvent.objects.get(kind=Kind.KIND_STUCK_ERRORED)
        self.assertEqual(event.job_id, job.pk)
        # Rescheduled by NetBox's own handle(), with the run's arguments.
        successor = Job.objects.get(name=CountingJob.name, status='scheduled')
        self.assertEqual(successor.interval, 30)
        stored = JobDispatch.objects.get(job=successor)
        from netbox_safejobs.payload import unseal

        self.assertEqual(unseal(stored.payload).kwargs.get('sleep'), 120)
        self.assertEqual(run_count(job.job_id), 1)
        self.assertIsNone(worker.process.poll(), 'the worker died with its horse')

    def test_killed_worker_is_closed_after_its_heartbeat_goes_stale(self):
        """The worker and its work horse die (a host lost): another worker closes the job after stuck_after."""
        job = CountingJob.enqueue(sleep=120)
        worker = self.start_worker()
        self.wait_running(job, worker)
        horses = worker.children()
        os.kill(worker.pid, signal.SIGKILL)  # the worker first, so that it cannot notice its horse dying
        for pid in horses:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.kill()
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': LIVELY}):
            self.assertEqual(run_pass().stuck_errored, [], 'closed before the heartbeat went stale')
            # Another worker's loop closes it; no pass by hand, no system job.
            self.start_worker()
            self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'errored', timeout=60, message='closed')
        elapsed = time.monotonic() - killed
        self.assertGreaterEqual(elapsed, LIVELY['stuck_after'] - 1)
        self.assertLess(elapsed, LIVELY['stuck_after'] + 15)
        job.refresh_from_db()
        self.assertIn('stopped heartbeating', job.error)
        self.assertEqual(RetryEvent.objects.filter(job_uuid=job.job_id, kind=Kind.KIND_STUCK_ERRORED).count(), 1)

    def test_a_frozen_worker_judged_dead_has_its_horse_stopped_when_it_wakes(self):
        """
        Judged dead, but only cut off (its host frozen, as in a partition): the close sends RQ's stop, and the work
        horse stops once the worker runs again, rather than running on beside the next run.
        """
        job = CountingJob.enqueue(sleep=120)
        worker = self.start_worker()
        horse = self.wait_running(job, worker).worker_pid
        frozen = [worker.pid, *worker.children()]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            with override_settings(PLUGINS_CONFIG={'netbox_safejobs': LIVELY}):
                self.wait_for(lambda: liveness.stale_leases(), timeout=LIVELY['stuck_after'] + 15, interval=0.5,
                              message='lease stale')
                self.assertEqual(liveness.close_stale().closed, [job.job_id])
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'errored')
        self.wait_for(lambda: not liveness.pid_alive(horse), timeout=15,
                      message='work horse stopped after the worker woke')
        self.assertIsNone(worker.process.poll(), 'the worker itself was stopped')
        time.sleep(1)
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored')
        self.assertEqual(RetryEvent.objects.filter(job_uuid=job.job_id, kind=Kind.KIND_STUCK_ERRORED).count(), 1)

    def test_work_horse_outliving_its_worker_is_never_closed(self):
        """The worker alone is SIGKILLed; its work horse runs on past stuck_after, heartbeating its own lease."""
        job = CountingJob.enqueue(sleep=LIVELY['stuck_after'] + 6)
        worker = self.start_worker()
        self.wait_running(job, worker)
        os.kill(worker.pid, signal.SIGKILL)
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': LIVELY}):
            while Job.objects.get(pk=job.pk).status == 'running':
                self.assertEqual(run_pass().stuck_errored, [], 'a live job was closed')
                time.sleep(1)
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertFalse(RetryEvent.objects.exists())
        self.assertEqual(run_count(job.job_id), 1)

    def test_live_job_survives_redis_flush_and_outlives_every_bound(self):
        """A job runs longer than stuck_after while Redis loses its data: it completes, once, and is never closed."""
        job = CountingJob.enqueue(sleep=LIVELY['stuck_after'] + 4)
        worker = self.start_worker()
        self.wait_running(job, worker)
        self.redis.flushdb()
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': LIVELY}):
            self.wait_for(lambda: Job.objects.get(pk=job.pk).status != 'running', timeout=60, message='job ended')
            self.assertEqual(run_pass().stuck_errored, [])
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(job.data, {'ran': True})
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_STUCK_ERRORED).exists())
        self.assertEqual(Job.objects.filter(name=CountingJob.name).count(), 1)

    def test_row_deleted_while_running_is_not_recreated(self):
        job = CountingJob.enqueue(interval=30, sleep=4)
        worker = self.start_worker()
        self.wait_running(job, worker)
        Job.objects.filter(pk=job.pk).delete()  # a queryset delete: no RQ cancel, the horse runs on
        self.wait_for(lambda: RetryEvent.objects.filter(kind=Kind.KIND_ROW_DELETED).exists(), timeout=60,
                      message='row_deleted event')
        time.sleep(1)
        self.assertFalse(Job.objects.filter(job_id=job.job_id).exists(), 'the deleted row came back')
        self.assertFalse(Job.objects.filter(name=CountingJob.name).exists(), 'a deleted periodic job got a next run')
        event = RetryEvent.objects.get(kind=Kind.KIND_ROW_DELETED)
        self.assertIn('not scheduled', event.detail)
        self.assertEqual(RetryEvent.objects.count(), 1)

    def test_job_closed_while_its_horse_runs_on_is_not_reopened(self):
        """
        The liveness check closes a job whose work horse in fact runs on (its worker was judged dead across a database
        outage or a partition): the horse's end does not turn it back to completed, nor schedule a second next run.
        """
        job = CountingJob.enqueue(interval=30, sleep=5)
        worker = self.start_worker()
        lease = self.wait_running(job, worker)
        judged = workers.WorkerIdentity(id=lease.worker, name='', host=lease.worker_host, pid=0)
        closed = liveness.close_horse(judged, lease.worker_pid, 'The worker was judged dead (test)')
        self.assertEqual(closed, [job.job_id])
        self.wait_for(lambda: lease.worker_pid not in worker.children(), timeout=60, message='the work horse ended')
        time.sleep(0.5)
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored', 'the horse reopened a closed job')
        self.assertIn('judged dead', job.error)
        self.assertEqual(run_count(job.job_id), 1)
        # One next run: NetBox's own, from the close; none from the horse.
        self.assertEqual(Job.objects.filter(name=CountingJob.name, status='scheduled').count(), 1)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())

    def test_stopped_from_background_tasks_is_closed_not_resent(self):
        from core.utils import stop_rq_job

        job = CountingJob.enqueue(sleep=120)
        worker = self.start_worker()
        self.wait_running(job, worker)
        stop_rq_job(str(job.job_id))
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status != 'running', timeout=30, message='job closed')
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored')
        self.assertIn('stopped from Background Tasks', job.error)
        self.assertEqual(RetryEvent.objects.get(job_uuid=job.job_id).kind, Kind.KIND_OPERATOR_STOPPED)
        self.assertEqual(run_pass().pushed, [])
        self.assertEqual(run_count(job.job_id), 1)


def in_own_session(func, errors):
    """``func()`` started in a thread, so in a PostgreSQL session of its own; what it raises goes to ``errors``."""

    def target():
        try:
            func()
        except Exception as e:
            errors.append(e)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def connection_now():
    with connection.cursor() as cursor:
        cursor.execute('SELECT clock_timestamp()')
        return cursor.fetchone()[0]


class OperatorTest(SafeJobsTransactionTestCase):

    def test_task_deleted_from_background_tasks_closes_its_job(self):
        from core.utils import delete_rq_job

        job = CountingJob.enqueue()
        other = CountingJob.enqueue()
        delete_rq_job(str(job.job_id))
        job.refresh_from_db()
        self.assertEqual(job.status, 'failed')
        self.assertIn('deleted from Background Tasks', job.error)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        self.assertEqual(RetryEvent.objects.get().kind, Kind.KIND_OPERATOR_STOPPED)
        # Not sent again, even when Redis later loses its data.
        self.redis.flushdb()
        self.assertEqual(run_pass().pushed, [other.job_id])
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'failed')


    def test_task_deleted_while_a_worker_claims_its_job(self):
        """
        The operator deletes the task from Background Tasks while a worker process claims its job: the claim committed
        first, so the job runs, keeps its lease, and is not marked failed under it.
        """
        from core.utils import delete_rq_job

        job = CountingJob.enqueue()
        token = uuid.uuid4()
        claimer = ClaimingProcess(CLAIM_SCRIPT.format(job_uuid=job.job_id, token=token))
        errors = []
        deleter = in_own_session(lambda: delete_rq_job(str(job.job_id)), errors)
        time.sleep(1)  # the delete now waits on the claim's locks
        self.assertEqual(claimer.release(), 0, claimer.output)
        deleter.join(30)
        self.assertEqual(errors, [])
        job.refresh_from_db()
        self.assertEqual(job.status, 'running')
        self.assertTrue(JobDispatch.objects.filter(job=job, token=token).exists(), 'the running job lost its lease')
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_OPERATOR_STOPPED).exists())

    def test_job_deleted_while_a_worker_claims_it_does_not_deadlock(self):
        """Job.delete() here and a claim of the same job in a worker process: both end, no deadlock, no 500."""
        job = CountingJob.enqueue()
        # The claim's order: the Job row, then its dispatch row (one statement in guard.py; two here, to wait between).
        claimer = ClaimingProcess(LOCK_IN_CLAIM_ORDER_SCRIPT.format(job_pk=job.pk))
        errors = []
        deleter = in_own_session(lambda: Job.objects.get(pk=job.pk).delete(), errors)
        time.sleep(0.5)  # the delete is under way
        self.assertEqual(claimer.release(), 0, claimer.output)
        deleter.join(30)
        self.assertEqual(errors, [])
        self.assertFalse(Job.objects.filter(pk=job.pk).exists())
        self.assertFalse(JobDispatch.objects.filter(job_uuid=job.job_id).exists())


# Run in a `netbox shell` of their own: a worker's claim, held inside its transaction until the test says go.
CLAIM_SCRIPT = """
import sys, uuid
from django.db import transaction
from core.models import Job
from netbox_safejobs import guard
from tests.jobs import CountingJob
with transaction.atomic():
    job = Job.objects.get(job_id='{job_uuid}')
    assert guard.claim(CountingJob, job, token=uuid.UUID('{token}')) is not None
    print('READY', flush=True)
    sys.stdin.readline()
"""
LOCK_IN_CLAIM_ORDER_SCRIPT = """
import sys, time
from django.db import connection, transaction
with transaction.atomic(), connection.cursor() as cursor:
    cursor.execute("UPDATE core_job SET status = 'running' WHERE id = {job_pk}")
    print('READY', flush=True)
    sys.stdin.readline()
    cursor.execute('UPDATE netbox_safejobs_jobdispatch SET claimed = clock_timestamp() WHERE job_id = {job_pk}')
"""


class ClaimingProcess:
    """A `netbox shell` process that runs ``script`` against this test's database, stopped at its READY line."""

    def __init__(self, script):
        self.process = subprocess.Popen(netbox_command('shell', '--command', script), env=worker_env(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.output = ''
        for line in self.process.stdout:
            self.output += line
            if line.strip() == 'READY':
                return
        raise AssertionError(f'the claiming process ended before it held its locks:\n{self.output}')

    def release(self, timeout=60):
        """Let it go on and commit; its exit status."""
        out, _ = self.process.communicate('go\n', timeout=timeout)
        self.output += out
        return self.process.returncode


class LeaseTest(SafeJobsTransactionTestCase):
    """Leases without a worker, and two passes at once, without worker processes."""

    def lease(self, worker_id=None, seen_ago=None):
        job = Job.objects.create(**compat.job_field_values(
            name=CountingJob.name, job_id=uuid.uuid4(), status='running', queue_name='default'))
        if worker_id is not None and seen_ago is not None:
            with connection.cursor() as cursor:
                cursor.execute(
                    f'INSERT INTO {WorkerHeartbeat._meta.db_table} (id, name, host, pid, version, started, seen) '
                    f"VALUES (%s, 'gone', 'elsewhere', 1, '0', now(), clock_timestamp() - %s * interval '1 second')",
                    [worker_id, seen_ago],
                )
        with connection.cursor() as cursor:
            cursor.execute(
                f'INSERT INTO {JobDispatch._meta.db_table} (job_id, job_uuid, queue_name, runner, method, created, '
                f"recoveries, claimed, token, worker, worker_host, worker_pid) VALUES (%s, %s, 'default', "
                f"'tests.jobs.CountingJob', '', now(), 0, clock_timestamp() - interval '1 hour', %s, %s, 'h', 2)",
                [job.pk, job.job_id, uuid.uuid4(), worker_id],
            )
        return job

    def test_worker_loop_judges_only_after_working_for_stuck_after(self):
        """Staleness across an outage is not death: a loop judges others only once it has itself worked that long."""
        from netbox_safejobs.settings import get_settings
        from netbox_safejobs.worker_loop import WorkerLoop

        loop = WorkerLoop(workers.WorkerIdentity(id=uuid.uuid4(), name='t', host='h', pid=1), get_settings())
        stuck_after = get_settings().stuck_after
        now = time.monotonic()
        self.assertFalse(loop.may_judge(now), 'judged before its first working tick')
        loop.working_since = now - stuck_after + 1
        self.assertFalse(loop.may_judge(now), 'judged right after the database came back')
        loop.working_since = now - stuck_after
        self.assertTrue(loop.may_judge(now))

    def test_no_heartbeat_is_stale_from_before_the_database_server_started(self):
        """A heartbeat older than stuck_after, but the server restarted since: not stale (a restart, a failover)."""
        worker_id = uuid.uuid4()
        job = self.lease(worker_id=worker_id, seen_ago=3600)
        with connection.cursor() as cursor:
            # Claimed and last seen an hour before the server started.
            cursor.execute(f"UPDATE {JobDispatch._meta.db_table} SET claimed = pg_postmaster_start_time() - "
                           f"interval '1 hour' WHERE job_id = %s", [job.pk])
            cursor.execute(f"UPDATE {WorkerHeartbeat._meta.db_table} SET seen = pg_postmaster_start_time() - "
                           f"interval '1 hour' WHERE id = %s", [worker_id])
            cursor.execute('SELECT extract(epoch FROM clock_timestamp() - pg_postmaster_start_time())')
            up = float(cursor.fetchone()[0])
        self.assertEqual(liveness.stale_leases(stuck_after=int(up) + 5), [])
        self.assertEqual(len(liveness.stale_leases(stuck_after=max(int(up) - 5, 1))), 1)
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'running')

    def test_immediate_job_lease_is_never_closed(self):
        """A lease without a worker (netbox runscript, immediate=True) belongs to no heartbeat: never closed."""
        job = self.lease(worker_id=None)
        self.assertEqual(run_pass().stuck_errored, [])
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'running')

    def test_fresh_heartbeat_keeps_a_lease_however_old(self):
        job = self.lease(worker_id=uuid.uuid4(), seen_ago=1)
        self.assertEqual(run_pass().stuck_errored, [])
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'running')

    def test_stale_heartbeat_closes_once_whatever_the_number_of_passes(self):
        job = self.lease(worker_id=uuid.uuid4(), seen_ago=3600)
        ids = liveness.stale_leases()
        self.assertEqual(len(ids), 1)
        # Two passes that both saw the lease: only one closes it.
        first = liveness._close('default', ids[0], 'test', Kind.KIND_STUCK_ERRORED)
        second = liveness._close('default', ids[0], 'test', Kind.KIND_STUCK_ERRORED)
        self.assertEqual((first, second), (job.job_id, None))
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'errored')
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_STUCK_ERRORED).count(), 1)
        self.assertFalse(WorkerHeartbeat.objects.exists() and run_pass().stuck_errored)
        self.assertEqual(workers.current(), None)

    def test_a_plain_close_records_the_run_time(self):
        """A job closed without NetBox's handle() (it failed) still gets what terminate() records: its run time."""
        from datetime import timedelta
        from unittest import mock

        job = self.lease(worker_id=uuid.uuid4(), seen_ago=3600)
        started = Job.objects.values_list('created', flat=True).get(pk=job.pk) - timedelta(minutes=3)
        Job.objects.filter(pk=job.pk).update(started=started)
        lease_id = liveness.stale_leases()[0]
        with mock.patch.object(liveness, '_close_through_netbox', side_effect=RuntimeError('no handle()')), \
                self.assertLogs('netbox_safejobs.liveness', 'ERROR'):
            self.assertEqual(liveness._close('default', lease_id, 'test', Kind.KIND_STUCK_ERRORED), job.job_id)
        job.refresh_from_db()
        self.assertEqual(job.status, 'errored')
        self.assertIn('Closing it through NetBox failed', job.error)
        if any(f.name == 'execution_time' for f in Job._meta.concrete_fields):
            self.assertEqual(job.execution_time, job.completed - started)


class UnrecordedEndTest(RunningJobTestCase):
    """
    A run whose end NetBox's ``handle()`` cannot record leaves its row ``running``: the lease is kept, and the worker
    closes the job once the work horse has exited, a periodic one with exactly one next run. Released, the row would
    stay ``running`` with nothing to watch it.
    """

    def assertClosedOnce(self, job, interval):
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'errored', timeout=30, message='job closed')
        job.refresh_from_db()
        self.assertIn('ended without NetBox recording the end of the run', job.error)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        self.assertEqual(run_count(job.job_id), 1)
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_STUCK_ERRORED, job_uuid=job.job_id).count(), 1)
        if interval:
            self.assertEqual(Job.objects.filter(name=job.name, status='scheduled', interval=interval).count(), 1)

    def test_a_result_that_cannot_be_saved(self):
        from .jobs import UnsavableResultJob

        job = UnsavableResultJob.enqueue(interval=30)
        self.start_worker()
        self.assertClosedOnce(job, interval=30)

    def test_the_database_failing_as_the_end_is_saved(self):
        """Every save of the end fails (as in an outage), the release after it goes through (the database is back)."""
        job = CountingJob.enqueue()
        with connection.cursor() as cursor:
            # The run's own end is refused as a lost connection would refuse it; the plugin's close is let through.
            cursor.execute(f"""
                CREATE FUNCTION safejobs_test_refuse_end() RETURNS trigger AS $$
                BEGIN
                    IF NEW.job_id = '{job.job_id}' AND NEW.status <> 'running'
                       AND coalesce(NEW.error, '') NOT LIKE '%Closed by netbox-safejobs%' THEN
                        RAISE EXCEPTION 'server closed the connection unexpectedly' USING ERRCODE = '08006';
                    END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql;
                CREATE TRIGGER safejobs_test_refuse_end BEFORE UPDATE ON core_job
                    FOR EACH ROW EXECUTE FUNCTION safejobs_test_refuse_end();
            """)
        self.addCleanup(self.drop_trigger)
        self.start_worker({**LIVELY, 'database_retries': 0})
        self.assertClosedOnce(job, interval=None)

    def drop_trigger(self):
        with connection.cursor() as cursor:
            cursor.execute('DROP TRIGGER IF EXISTS safejobs_test_refuse_end ON core_job; '
                           'DROP FUNCTION IF EXISTS safejobs_test_refuse_end()')


class ObservedCloseTest(SafeJobsTransactionTestCase):
    """``netbox safejobs_recover`` watches a stale lease before closing it: after an outage, live workers beat again."""
    lease = LeaseTest.lease

    def test_a_worker_that_beats_again_while_watched_keeps_its_job(self):
        worker_id = uuid.uuid4()
        job = self.lease(worker_id=worker_id, seen_ago=3600)

        def beat():
            time.sleep(0.5)
            with connections['default'].cursor() as cursor:
                cursor.execute(f'UPDATE {WorkerHeartbeat._meta.db_table} SET seen = clock_timestamp() WHERE id = %s',
                               [worker_id])
            connections['default'].close()

        thread = threading.Thread(target=beat)
        thread.start()
        report = liveness.close_stale(observe=2)
        thread.join()
        self.assertEqual(report.closed, [])
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'running')

    def test_a_worker_still_silent_when_watched_is_closed(self):
        job = self.lease(worker_id=uuid.uuid4(), seen_ago=3600)
        started = time.monotonic()
        self.assertEqual(liveness.close_stale(observe=1).closed, [job.job_id])
        self.assertGreaterEqual(time.monotonic() - started, 1)
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'errored')

    def test_the_command_watches_for_two_heartbeats_by_default(self):
        from django.core.management import CommandError, call_command

        self.assertEqual(liveness.observation_window(), 2 * (10 + 1.0))
        with self.assertRaisesMessage(CommandError, '--observe is -1; it must be a number of seconds >= 0.'):
            call_command('safejobs_recover', '--observe', '-1')


class SaveAgainstCloseTest(SafeJobsTransactionTestCase):
    """
    A work horse's save and the liveness check's close of the same job, in two sessions: decided under the lease's
    lock. A save that meets the close under way waits for it and is refused; it never writes over the close.
    """

    def test_a_save_waiting_on_the_close_is_refused(self):
        from django.db import transaction

        from netbox_safejobs import dispatch, guard

        token = uuid.uuid4()
        job = Job.objects.create(**compat.job_field_values(
            name=CountingJob.name, job_id=uuid.uuid4(), status='running', queue_name='default',
            started=timezone.now()))
        with connection.cursor() as cursor:
            cursor.execute(
                f'INSERT INTO {JobDispatch._meta.db_table} (job_id, job_uuid, queue_name, runner, method, created, '
                f"recoveries, claimed, token, worker_host) VALUES (%s, %s, 'default', 'tests.jobs.CountingJob', '', "
                f"now(), 0, clock_timestamp(), %s, 'h') RETURNING id", [job.pk, job.job_id, token])
            lease_id = cursor.fetchone()[0]
        closing, errors = threading.Event(), []

        def close():
            # The check's close, held open: the lease deleted and the job errored, not yet committed.
            with transaction.atomic():
                self.assertIsNotNone(liveness._take_lease('default', lease_id))
                Job.objects.filter(pk=job.pk).update(status='errored', error='closed by the check')
                closing.set()
                time.sleep(1.5)

        thread = in_own_session(close, errors)
        self.assertTrue(closing.wait(10))
        held = dispatch.HeldRun(job, CountingJob)
        guard._update_only(job, held, token, CountingJob)
        job.status, job.data = 'completed', {'ran': True}
        started = time.monotonic()
        with self.assertRaises(guard.JobLeaseLost):
            job.save()
        self.assertGreater(time.monotonic() - started, 1, 'the save did not wait for the close')
        thread.join(10)
        self.assertEqual(errors, [])
        self.assertTrue(held.lease_lost)
        closed = Job.objects.get(pk=job.pk)
        self.assertEqual((closed.status, closed.error, closed.data), ('errored', 'closed by the check', None))

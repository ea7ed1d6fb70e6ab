"""On-commit, durable dispatch: what reaches Redis, when, and what is stored until a worker claims the job."""

import pickle
import threading
import time
import uuid
from datetime import timedelta

from core.models import Job
from django.core.signals import request_finished, request_started
from django.db import transaction
from django.test import SimpleTestCase, override_settings
from django.utils import timezone
from django_rq import get_queue
from rq.job import Job as RQJob

from netbox_safejobs import compat, dispatch, patches, payload
from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.recovery import run_pass
from netbox_safejobs.testing.queues import closed_port_queues, override_rq_queues, queues_on, silent_port

from .base import SafeJobsTransactionTestCase, run_burst_worker
from .jobs import CountingJob, run_count


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
        # Returned finished, as NetBox returns it (`netbox runscript` prints its duration from it).
        self.assertEqual(job.status, 'completed')
        self.assertIsNotNone(job.completed)
        self.assertEqual(job.data, {'ran': True})
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
        with override_rq_queues(closed_port_queues()):
            with transaction.atomic():
                job = CountingJob.enqueue()
            # No exception reached the caller; the data is committed.
        self.assertTrue(Job.objects.filter(pk=job.pk, status='pending').exists())
        self.assertFalse(self.in_redis(job))
        event = RetryEvent.objects.get(kind=RetryEventKindChoices.KIND_DISPATCH_FAILED)
        self.assertEqual(event.job_id, job.pk)
        self.assertEqual(event.job_uuid, job.job_id)
        self.assertIn('ConnectionError', event.detail)
        # Owed at once, in the database: no age to wait for.
        row = JobDispatch.objects.get(job=job)
        self.assertEqual(row.state, 'owed')
        self.assertIsNotNone(row.payload)

        # Redis is back: a pass sends the stored push at once, and only once; the worker runs it once.
        report = run_pass()
        self.assertEqual(report.pushed, [job.job_id])
        self.assertTrue(self.in_redis(job))
        self.assertEqual(JobDispatch.objects.get(job=job).state, 'sent')
        self.assertEqual(run_pass().pushed, [])
        run_burst_worker()
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        self.assertEqual(RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_RECOVERED).count(), 1)
        self.assertEqual(RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_DISPATCH_FAILED).count(), 1)

    def test_successful_push_is_stamped_sent(self):
        job = CountingJob.enqueue()
        row = JobDispatch.objects.get(job=job)
        self.assertEqual(row.state, 'sent')
        self.assertGreaterEqual(row.sent, row.created)
        task = RQJob.fetch(str(job.job_id), connection=self.redis)
        self.assertEqual(task.meta.get(dispatch.PUSH_MARKER), 1, 'the task does not say it was pushed after commit')

    def test_stored_push_is_signed(self):
        job = CountingJob.enqueue()
        blob = bytes(JobDispatch.objects.get(job=job).payload)
        push = payload.unseal(blob)
        self.assertEqual(push.method, 'enqueue')
        self.assertEqual(push.kwargs['job_id'], str(job.job_id))
        tampered = blob[:-1] + bytes([blob[-1] ^ 1])
        with self.assertRaisesMessage(payload.BadPayload, 'bad signature'):
            payload.unseal(tampered)
        with self.assertRaisesMessage(payload.BadPayload, 'truncated'):
            payload.unseal(blob[:10])

    def test_stored_push_survives_a_key_rotation(self):
        """SECRET_KEY rotated as Django documents it: the old key in SECRET_KEY_FALLBACKS still opens stored pushes."""
        from django.conf import settings

        job = CountingJob.enqueue()
        blob = bytes(JobDispatch.objects.get(job=job).payload)
        old_key = settings.SECRET_KEY
        new_key = 'rotated-' + old_key[::-1]
        with override_settings(SECRET_KEY=new_key, SECRET_KEY_FALLBACKS=[old_key]):
            self.assertEqual(payload.unseal(blob).kwargs['job_id'], str(job.job_id))
        with override_settings(SECRET_KEY=new_key, SECRET_KEY_FALLBACKS=[]):
            with self.assertRaisesMessage(payload.BadPayload, 'SECRET_KEY_FALLBACKS'):
                payload.unseal(blob)
            # Rotated in NetBox's configuration.py, which NetBox does not pass on to Django: read from there too.
            from unittest import mock

            from netbox_safejobs import compat

            configuration = compat.netbox_configuration()
            self.assertIsNotNone(configuration, "NetBox's configuration module not found")
            with mock.patch.object(configuration, 'SECRET_KEY_FALLBACKS', [old_key], create=True):
                self.assertEqual(payload.unseal(blob).kwargs['job_id'], str(job.job_id))

    def test_caller_transaction_survives_a_failing_enqueue(self):
        """An enqueue that raises inside the caller's transaction leaves it usable, as stock NetBox does."""
        from django.core.exceptions import ValidationError

        with transaction.atomic():
            kept = CountingJob.enqueue()
            with self.assertRaises(ValidationError):
                CountingJob.enqueue(name='x' * 300)  # fails Job.full_clean()
            with self.assertRaises((pickle.PicklingError, AttributeError, TypeError)):
                CountingJob.enqueue(callback=lambda: None)  # fails after the Job row was saved
            after = CountingJob.enqueue()
        self.assertEqual(set(Job.objects.values_list('pk', flat=True)), {kept.pk, after.pk})
        self.assertEqual(JobDispatch.objects.count(), 2)
        self.assertTrue(self.in_redis(kept))
        self.assertTrue(self.in_redis(after))

    def test_delete_rolled_back_keeps_the_task(self):
        """Job.delete() cancels the RQ task only once the delete commits."""
        job = CountingJob.enqueue()
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                Job.objects.get(pk=job.pk).delete()
                self.assertNotEqual(RQJob.fetch(str(job.job_id), connection=self.redis).get_status(), 'canceled')
                raise RuntimeError('roll back')
        self.assertTrue(Job.objects.filter(pk=job.pk, status='pending').exists())
        self.assertEqual(RQJob.fetch(str(job.job_id), connection=self.redis).get_status(), 'queued')
        run_burst_worker()
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')

        other = CountingJob.enqueue()
        with transaction.atomic():
            Job.objects.get(pk=other.pk).delete()
        self.assertEqual(RQJob.fetch(str(other.job_id), connection=self.redis).get_status(), 'canceled')

    def test_failed_push_in_an_event_rule_does_not_recurse(self):
        """
        An event rule on "dispatch failed" whose action enqueues a job (as a Script action does): while Redis is
        down, its own push must not fail, record, trigger and enqueue again until RecursionError.
        """
        from netbox_safejobs import event_types

        enqueued = []

        def rule_action(event, using='default'):
            enqueued.append(CountingJob.enqueue())
            return 1

        original = event_types.trigger
        event_types.trigger = rule_action
        try:
            with override_rq_queues(closed_port_queues()):
                job = CountingJob.enqueue()
        finally:
            event_types.trigger = original
        self.assertEqual(len(enqueued), 1)
        self.assertEqual(RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_DISPATCH_FAILED).count(), 1)
        states = {row.job_id: row.state for row in JobDispatch.objects.all()}
        self.assertEqual(states, {job.pk: 'owed', enqueued[0].pk: 'owed'})
        self.assertEqual(sorted(run_pass().pushed), sorted([job.job_id, enqueued[0].job_id]))


@override_settings(RQ={'COMMIT_MODE': 'auto'})
class DispatchAutoCommitModeTest(DispatchTestMixin, SafeJobsTransactionTestCase):
    pass


@override_settings(RQ={'COMMIT_MODE': 'on_db_commit'})
class DispatchOnDbCommitModeTest(DispatchTestMixin, SafeJobsTransactionTestCase):
    pass


class SilentRedisTest(SafeJobsTransactionTestCase):
    """
    A Redis that accepts connections and never answers costs a push its whole timeout (5 s): a caller that commits
    many jobs waits for one push, not one per job. The others are stored as owed at once, each with its event.
    """
    JOBS = 6
    # One push's timeout, and room for a busy machine; one push per job would take JOBS times the timeout.
    WITHIN = 5 + 3

    def assertHeldOnce(self, jobs, elapsed):
        self.assertLess(elapsed, self.WITHIN, f'{len(jobs)} pushes held the caller')
        self.assertEqual([JobDispatch.objects.get(job=job).state for job in jobs], ['owed'] * len(jobs))
        events = RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_DISPATCH_FAILED).order_by('pk')
        self.assertEqual(sorted(event.job_id for event in events), sorted(job.pk for job in jobs))
        self.assertIn('Timeout', events[0].detail)
        self.assertEqual(sum('Not tried' in event.detail for event in events), len(jobs) - 1)

    def assertRunOnce(self, jobs):
        self.assertEqual(sorted(run_pass().pushed), sorted(job.job_id for job in jobs))
        run_burst_worker()
        for job in jobs:
            self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
            self.assertEqual(run_count(job.job_id), 1)

    def test_one_transaction_waits_for_one_push(self):
        with silent_port() as port, override_rq_queues(queues_on(port)):
            started = time.monotonic()
            with transaction.atomic():
                jobs = [CountingJob.enqueue() for _ in range(self.JOBS)]
            elapsed = time.monotonic() - started
        self.assertHeldOnce(jobs, elapsed)
        self.assertRunOnce(jobs)

    def test_one_request_waits_for_one_push_and_the_next_request_tries_again(self):
        """Pushes of one request outside a transaction (each enqueue its own commit, as event rules' webhooks are)."""
        request_started.send(sender=self.__class__)
        with silent_port() as port, override_rq_queues(queues_on(port)):
            started = time.monotonic()
            jobs = []
            for _ in range(self.JOBS):
                jobs.append(CountingJob.enqueue())
                time.sleep(dispatch.PUSH_FAILURE_GAP)  # in a request, however far apart
            elapsed = time.monotonic() - started - self.JOBS * dispatch.PUSH_FAILURE_GAP
        request_finished.send(sender=self.__class__)
        self.assertHeldOnce(jobs, elapsed)
        # Redis answers: the next request pushes at once.
        request_started.send(sender=self.__class__)
        job = CountingJob.enqueue()
        request_finished.send(sender=self.__class__)
        self.assertEqual(JobDispatch.objects.get(job=job).state, 'sent')
        self.assertRunOnce(jobs)

    def test_outside_a_request_a_later_push_is_tried_again(self):
        with silent_port() as port:
            with override_rq_queues(queues_on(port)):
                first = CountingJob.enqueue()
                second = CountingJob.enqueue()
            self.assertHeldOnce([first, second], 0)
            # Another Redis is not held back by this one's failure.
            job = CountingJob.enqueue()
            self.assertEqual(JobDispatch.objects.get(job=job).state, 'sent')
            # A push that does not follow closely is tried again.
            time.sleep(dispatch.PUSH_FAILURE_GAP)
            with override_rq_queues(queues_on(port)):
                third = CountingJob.enqueue()
        (event,) = RetryEvent.objects.filter(job=third)
        self.assertNotIn('Not tried', event.detail)
        self.assertIn('Timeout', event.detail)


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

        patches.uninstall()
        original_enqueue = JobRunner.__dict__['enqueue']
        original_handle = JobRunner.__dict__['handle']
        reason = patches.capture_unsupported_reason
        patches.capture_unsupported_reason = lambda: 'core.models.jobs has no module global django_rq'
        try:
            with self.assertLogs('netbox_safejobs.patches', level='WARNING') as logs:
                installed = patches.install()
            self.assertEqual(installed, {'guard', 'worker'})
            self.assertIs(JobRunner.__dict__['enqueue'], original_enqueue)
            self.assertIsNot(JobRunner.__dict__['handle'], original_handle)
            self.assertEqual(len(logs.output), 1)
            self.assertIn('On-commit dispatch not installed: core.models.jobs has no module global django_rq',
                          logs.output[0])
            job = CountingJob.enqueue()
            self.assertFalse(JobDispatch.objects.filter(job=job).exists())
            self.assertTrue(RQJob.exists(str(job.job_id), connection=self.redis), 'NetBox no longer pushes')
        finally:
            patches.capture_unsupported_reason = reason
            patches.uninstall()
            patches.install()
        expected = {'dispatch', 'webhooks', 'worker_checks', 'guard', 'worker'}
        if compat.event_rule_action_provider()[0] is not None:
            expected.add('event_actions')
        self.assertEqual(patches.installed(), expected)

    def test_capture_supported_on_this_netbox(self):
        self.assertIsNone(patches.capture_unsupported_reason())
        self.assertIsNone(patches.handle_unsupported_reason())


class FirstReleaseUpgradeTest(SafeJobsTransactionTestCase):
    """An upgrade from 0.1.0 with pushes stored: migration 0006 signs them, and they run."""

    def test_unsigned_pushes_of_the_first_release_are_signed_and_run(self):
        import importlib

        from django.apps import apps
        from django.db import connection

        migration = importlib.import_module('netbox_safejobs.migrations.0006_sign_first_release_pushes')
        with override_rq_queues(closed_port_queues()):
            jobs = [CountingJob.enqueue() for _ in range(3)]
        for job in jobs:
            push = payload.unseal(JobDispatch.objects.get(job=job).payload)
            # What 0.1.0 stored: the bare pickle of (method, args, kwargs).
            legacy = pickle.dumps((push.method, push.args, push.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            JobDispatch.objects.filter(job=job).update(payload=legacy)
        foreign = jobs[2]
        JobDispatch.objects.filter(job=foreign).update(payload=pickle.dumps(['not', 'a', 'push']))
        with self.assertRaisesMessage(payload.BadPayload, 'bad signature'):
            payload.unseal(JobDispatch.objects.get(job=jobs[0]).payload)

        class Editor:
            pass

        editor = Editor()
        editor.connection = connection
        migration.sign_first_release_pushes(apps, editor)
        for job in jobs[:2]:
            self.assertEqual(payload.unseal(JobDispatch.objects.get(job=job).payload).kwargs['job_id'],
                             str(job.job_id))
        self.assertFalse(payload.is_signed(JobDispatch.objects.get(job=foreign).payload), 'a foreign blob was signed')
        report = run_pass()
        self.assertEqual(sorted(report.pushed), sorted(job.job_id for job in jobs[:2]))
        self.assertEqual(report.rejected, [foreign.job_id])
        run_burst_worker()
        for job in jobs[:2]:
            self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
            self.assertEqual(run_count(job.job_id), 1)


class FirstReleasePushUnpicklerTest(SimpleTestCase):
    """Migration 0006 reads 0.1.0's unsigned pushes: whoever can write a row must not run code on the upgrade host."""

    def test_a_blob_that_calls_anything_else_is_refused_before_the_call(self):
        import importlib
        import os
        import tempfile

        migration = importlib.import_module('netbox_safejobs.migrations.0006_sign_first_release_pushes')
        marker = os.path.join(tempfile.mkdtemp(), 'ran')

        class Call:
            def __init__(self, func, *args):
                self.reduced = (func, args)

            def __reduce__(self):
                return self.reduced

        for hostile in (Call(os.system, f'touch {marker}'), Call(open, marker, 'w'),
                        Call(getattr, Job, 'objects'), Call(getattr, CountingJob, 'enqueue'),
                        Call(importlib.import_module, 'antigravity')):
            with self.subTest(call=hostile.reduced[0].__name__):
                blob = pickle.dumps(('enqueue', (CountingJob.handle,), {'job': hostile}))
                self.assertIsNone(migration._first_release_push(blob))
                self.assertFalse(os.path.exists(marker), 'the blob ran code')
        # What 0.1.0 pushed is read: the runner's handle, the Job, a UUID and dates.
        job = Job(name='j', job_id=uuid.uuid4(), created=timezone.now())
        legacy = pickle.dumps(('enqueue_at', (timezone.now(), CountingJob.handle),
                               {'job': job, 'job_id': str(job.job_id), 'sleep': timedelta(seconds=1)}))
        push = migration._first_release_push(legacy)
        self.assertEqual(push.method, 'enqueue_at')
        self.assertEqual(push.args[1], CountingJob.handle)
        self.assertEqual(push.kwargs['job'].job_id, job.job_id)


class UpgradeFromPreviousReleaseTest(SafeJobsTransactionTestCase):
    """
    An upgrade from 0.2.1 with jobs in flight: rows and heartbeats written by 0.2.1 (without the columns of migrations
    0007 and 0008, which 0.3.0 does not name either) before and after `netbox migrate`, and the jobs they hold run once.
    The test leaves the plugin migrated to its latest migration: the tests after it share the database.
    """

    def migrate(self, target=None):
        """Migrate the plugin to `target`, or to its latest migration (where every later test expects it)."""
        from django.db import connection
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        if target is None:
            target = max(name for app, name in executor.loader.graph.leaf_nodes() if app == 'netbox_safejobs')
        executor.migrate([('netbox_safejobs', target)])

    def test_jobs_in_flight_across_migrations_0007_and_0008(self):
        import uuid

        from django.db import connection

        from netbox_safejobs.models import WorkerHeartbeat

        with override_rq_queues(closed_port_queues()):
            before = [CountingJob.enqueue() for _ in range(3)]  # owed: Redis was down
        self.migrate('0006_sign_first_release_pushes')
        try:
            with connection.cursor() as cursor:
                cursor.execute('SELECT column_name FROM information_schema.columns '
                               "WHERE table_name = 'netbox_safejobs_jobdispatch'")
                self.assertNotIn('gave_up', {row[0] for row in cursor.fetchall()})
                # A 0.2.1 worker's heartbeat, as 0.2.1 writes it.
                cursor.execute(
                    'INSERT INTO netbox_safejobs_workerheartbeat (id, name, host, pid, version, started, seen, '
                    "host_clock, guard) VALUES (%s, 'old', 'h', 1, '0.2.1', now(), now(), now(), true)",
                    [uuid.uuid4()],
                )
        finally:
            self.migrate()
        with override_rq_queues(closed_port_queues()):
            after = [CountingJob.enqueue() for _ in range(2)]
        # A row as 0.2.1 inserts it after the migration (its INSERT names none of the new columns).
        row = JobDispatch.objects.get(job=after[0])
        JobDispatch.objects.filter(pk=row.pk).delete()
        with connection.cursor() as cursor:
            cursor.execute(
                'INSERT INTO netbox_safejobs_jobdispatch (job_id, job_uuid, queue_name, runner, method, payload, '
                "created, recoveries, worker_host, owed) VALUES (%s, %s, %s, %s, %s, %s, now(), 0, '', now())",
                [row.job_id, row.job_uuid, row.queue_name, row.runner, row.method, row.payload],
            )
        self.assertEqual(WorkerHeartbeat.objects.get(version='0.2.1').queues, '')
        self.assertEqual(JobDispatch.objects.get(job=after[0]).name, '')
        report = run_pass()
        self.assertEqual(sorted(report.pushed), sorted(job.job_id for job in before + after))
        run_burst_worker()
        for job in before + after:
            self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
            self.assertEqual(run_count(job.job_id), 1)

    def test_migrating_back_below_0007_with_a_webhook_in_flight(self):
        """
        0006 wants a job on every row: the webhook's row (it has none) is deleted on the way back, with a warning,
        instead of the NOT NULL failing; the job's row stays, and runs once after `netbox migrate`.
        """
        from netbox_safejobs import webhooks

        with override_rq_queues(closed_port_queues()):
            with transaction.atomic():
                job = CountingJob.enqueue()
                task_id = webhooks.store('default', webhooks.WEBHOOK_TASK, (), {'event_type': 'object_created'})
        self.assertTrue(JobDispatch.objects.filter(job_uuid=task_id, job__isnull=True).exists())
        try:
            with self.assertLogs('netbox_safejobs.migrations', 'WARNING') as logs:
                self.migrate('0006_sign_first_release_pushes')
            self.assertIn('deleted 1 webhook(s) in flight', logs.output[0])
        finally:
            self.migrate()
        self.assertEqual(list(JobDispatch.objects.values_list('job_uuid', flat=True)), [job.job_id])
        self.assertEqual(sorted(run_pass().pushed), [job.job_id])
        run_burst_worker()
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'completed')
        self.assertEqual(run_count(job.job_id), 1)

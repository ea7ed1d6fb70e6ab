"""
One chain per periodic job: never two future runs of one periodic job, duplicates merged once with an event, and no
next run in the past. Real workers, real PostgreSQL and Redis.
"""

import pickle
import uuid
from datetime import timedelta

from core.models import Job
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.test import RequestFactory, SimpleTestCase
from django.utils import timezone
from rq.job import Job as RQJob
from utilities.request import copy_safe_request

from netbox_safejobs import chains, compat
from netbox_safejobs.choices import CLAIMABLE_STATES
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.jobs import EventRetentionJob
from netbox_safejobs.models import RetryEvent
from netbox_safejobs.testing.fixtures import set_mode

from .base import SafeJobsTransactionTestCase, Worker, worker_env
from .jobs import CountingJob, run_count

LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10, 'relay_interval': 0.5}
DAY = 60 * 24


def waiting(name):
    return list(Job.objects.filter(name=name, status__in=CLAIMABLE_STATES).order_by('pk'))


def later(**delta):
    return timezone.now() + timedelta(**delta)


class ChainTest(SafeJobsTransactionTestCase):

    def plugin_worker(self):
        worker = Worker('default', burst=False, env=worker_env(LIVELY))
        self.addCleanup(worker.kill)
        return worker

    def test_two_future_runs_of_a_system_job_are_merged_by_a_starting_worker(self):
        """What NetBox 4.2 – 4.6.1 can leave (#21167, #22232): two scheduled rows of one system job, with tasks."""
        set_mode('stock')
        try:
            first = EventRetentionJob.enqueue(schedule_at=later(days=1), interval=DAY)
            second = EventRetentionJob.enqueue(schedule_at=later(days=1, minutes=5), interval=DAY)
        finally:
            set_mode('plugin')
        self.plugin_worker()
        self.wait_for(lambda: len(waiting(EventRetentionJob.name)) == 1, timeout=60, message='one future run')
        self.assertEqual([run.pk for run in waiting(EventRetentionJob.name)], [first.pk])
        event = RetryEvent.objects.get(kind=Kind.KIND_CHAIN_MERGED)
        self.assertEqual(event.job_uuid, first.job_id)
        self.assertIn(str(second.job_id), event.detail)
        # The deleted run's task is cancelled once the delete commits (by the worker's on-commit hook, a moment after
        # the row is gone): it never runs.
        task = RQJob.fetch(str(second.job_id), connection=self.redis)
        self.wait_for(lambda: task.get_status(refresh=True) == 'canceled', timeout=10, message='task cancelled')
        # Merged once: another pass finds nothing.
        self.assertEqual(chains.merge().merged, [])
        self.assertEqual(RetryEvent.objects.filter(kind=Kind.KIND_CHAIN_MERGED).count(), 1)

    def test_missed_run_runs_once_and_its_next_run_is_not_in_the_past(self):
        """A run due three hours ago, every worker down since: one run, its next a minute later, not due (#20243)."""
        job = CountingJob.enqueue(interval=60, schedule_at=later(hours=-3))
        self.plugin_worker()
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'completed', timeout=90, message='the missed run')
        ended = Job.objects.get(pk=job.pk).completed
        self.wait_for(lambda: waiting(CountingJob.name), timeout=10, message='its next run')
        [successor] = waiting(CountingJob.name)
        self.assertEqual(successor.status, 'scheduled')
        self.assertGreater(successor.scheduled, ended + timedelta(seconds=50))
        self.assertLess(successor.scheduled, ended + timedelta(minutes=2))
        self.assertEqual(run_count(job.job_id), 1)

    def test_next_run_not_created_when_the_chain_already_has_one(self):
        """A run ends while another future run of its chain waits: no second next run, one event."""
        job = CountingJob.enqueue(interval=30, sleep=3)
        self.plugin_worker()
        self.wait_for(lambda: run_count(job.job_id) == 1, timeout=90, message='run() entered')
        other = CountingJob.enqueue(interval=30, sleep=3, schedule_at=later(hours=1))
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'completed', timeout=30, message='run ended')
        # NetBox decides on the next run after it has saved the run completed: wait for that decision, the event.
        self.wait_for(lambda: RetryEvent.objects.filter(kind=Kind.KIND_CHAIN_MERGED).exists(), timeout=30,
                      message='the next run declined')
        self.assertEqual([run.pk for run in waiting(CountingJob.name)], [other.pk])
        event = RetryEvent.objects.get(kind=Kind.KIND_CHAIN_MERGED)
        self.assertEqual(event.job_uuid, job.job_id)
        self.assertIn('Next run not scheduled', event.detail)
        self.assertIn(str(other.job_id), event.detail)

    def test_next_run_created_beside_a_schedule_with_other_arguments(self):
        """Two schedules of one job with different arguments are two chains (NetBox keeps them apart, #22232)."""
        job = CountingJob.enqueue(interval=30, sleep=3)
        self.plugin_worker()
        self.wait_for(lambda: run_count(job.job_id) == 1, timeout=90, message='run() entered')
        other = CountingJob.enqueue(interval=30, sleep=4, schedule_at=later(hours=1))
        self.wait_for(lambda: len(waiting(CountingJob.name)) == 2, timeout=30, message='its next run')
        self.assertIn(other.pk, [run.pk for run in waiting(CountingJob.name)])
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_CHAIN_MERGED).exists())


class MergeTest(SafeJobsTransactionTestCase):
    """The merge pass and the chain check without workers."""

    def test_merge_keeps_the_earliest_run_of_each_chain_and_dry_run_changes_nothing(self):
        first = CountingJob.enqueue(interval=30, sleep=1, schedule_at=later(hours=1))
        second = CountingJob.enqueue(interval=30, sleep=1, schedule_at=later(minutes=30))
        third = CountingJob.enqueue(interval=30, sleep=1, schedule_at=later(hours=2))
        other_schedule = CountingJob.enqueue(interval=30, sleep=2, schedule_at=later(hours=3))
        other_interval = CountingJob.enqueue(interval=60, sleep=1, schedule_at=later(hours=3))
        dry = chains.merge(dry_run=True)
        self.assertEqual(dry.merged, [(second.job_id, [first.job_id, third.job_id])])
        self.assertEqual(len(waiting(CountingJob.name)), 5)
        self.assertFalse(RetryEvent.objects.exists())
        report = chains.merge()
        self.assertEqual(report.merged, [(second.job_id, [first.job_id, third.job_id])])
        self.assertEqual({run.pk for run in waiting(CountingJob.name)},
                         {second.pk, other_schedule.pk, other_interval.pk})
        self.assertEqual(RetryEvent.objects.get().kind, Kind.KIND_CHAIN_MERGED)
        for deleted in (first, third):
            self.assertEqual(RQJob.fetch(str(deleted.job_id), connection=self.redis).get_status(refresh=False),
                             'canceled')
        self.assertEqual(chains.merge().merged, [])

    def test_system_job_next_run_skipped_on_every_netbox(self):
        """NetBox 4.2 – 4.6.1 do not check before rescheduling a system job; the plugin does."""
        waiting_run = EventRetentionJob.enqueue(schedule_at=later(days=1), interval=DAY)
        ended = Job.objects.create(**compat.job_field_values(
            name=EventRetentionJob.name, job_id=uuid.uuid4(), status='completed', interval=DAY,
            started=timezone.now(), completed=timezone.now(), queue_name='default'))
        with transaction.atomic():
            found = chains.next_run_taken(EventRetentionJob, {'name': EventRetentionJob.name, 'interval': DAY,
                                                              'schedule_at': later(days=1)}, ended)
        self.assertEqual(found.pk, waiting_run.pk)
        self.assertEqual(RetryEvent.objects.get(kind=Kind.KIND_CHAIN_MERGED).job_uuid, ended.job_id)

    def test_a_one_off_run_of_a_system_job_does_not_end_its_chain(self):
        """``MySystemJob.enqueue()`` without an interval is a run of its own, not the chain's next one."""
        EventRetentionJob.enqueue()
        ended = Job.objects.create(**compat.job_field_values(
            name=EventRetentionJob.name, job_id=uuid.uuid4(), status='completed', interval=DAY,
            started=timezone.now(), completed=timezone.now(), queue_name='default'))
        with transaction.atomic():
            self.assertIsNone(chains.next_run_taken(EventRetentionJob, {'name': EventRetentionJob.name,
                                                                        'interval': DAY,
                                                                        'schedule_at': later(days=1)}, ended))
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_CHAIN_MERGED).exists())

    def test_runs_of_one_schedule_compare_equal_and_separate_schedules_do_not(self):
        """A script's arguments carry its schedule's request (with its id): runs of one schedule are one chain."""
        def request():
            r = RequestFactory().post('/extras/scripts/1/', {'x': 1})
            r.user = AnonymousUser()
            r.id = uuid.uuid4()
            return copy_safe_request(r)

        scheduled = request()
        waiting_run = CountingJob.enqueue(interval=30, schedule_at=later(hours=1), request=scheduled, data={'x': 1})
        ended = Job.objects.create(**compat.job_field_values(
            name=CountingJob.name, job_id=uuid.uuid4(), status='completed', interval=30, queue_name='default'))
        same = {'name': CountingJob.name, 'interval': 30, 'schedule_at': later(hours=1), 'data': {'x': 1},
                'request': pickle.loads(pickle.dumps(scheduled))}
        with transaction.atomic():
            self.assertIsNone(chains.next_run_taken(CountingJob, {**same, 'request': request()}, ended))
            self.assertEqual(chains.next_run_taken(CountingJob, same, ended).pk, waiting_run.pk)


class NextRunFloorTest(SimpleTestCase):
    """#20243: a next run is never scheduled in the past (NetBox 4.4.2+ do it themselves; the plugin on every one)."""

    def test_floor(self):
        now = timezone.now()
        self.assertEqual(compat.next_run_floor(now - timedelta(hours=3), now=now), now + timedelta(minutes=1))
        self.assertEqual(compat.next_run_floor(now + timedelta(seconds=10), now=now), now + timedelta(minutes=1))
        on_time = now + timedelta(minutes=30)
        self.assertEqual(compat.next_run_floor(on_time, now=now), on_time)
        # What NetBox already raised to its own floor, a moment ago, is left exactly as it is.
        netbox_floor = now - timedelta(seconds=1) + timedelta(minutes=1)
        self.assertEqual(compat.next_run_floor(netbox_floor, now=now), netbox_floor)
        self.assertIsNone(compat.next_run_floor(None))

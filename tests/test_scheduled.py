"""
Scheduled tasks no RQ scheduler moves (``scheduled.py``): a worker killed with its RQ scheduler leaves the scheduler's
lock in Redis, and the other workers take it over only in RQ's maintenance tasks, every 10 minutes.
"""

import time
from datetime import timedelta

from django.utils import timezone
from django_rq import get_connection, get_queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler

from netbox_safejobs import scheduled

from .base import QUEUES, PrivateRedisTestCase
from .jobs import CountingJob, run_count

# What a worker SIGKILLed with its scheduler leaves: the scheduler's lock on every queue, held on (61 s in RQ; longer
# here, so that the test cannot pass by the lock running out).
DEAD_HOLDER = 'a-worker-killed-with-its-scheduler'


def hold_scheduler_locks():
    connection = get_connection('default')
    for name in QUEUES:
        connection.set(RQScheduler.get_locking_key(name), DEAD_HOLDER, ex=600)


class EnqueueOverdueTest(PrivateRedisTestCase):

    def test_only_tasks_overdue_by_more_than_the_bound_are_moved(self):
        queue = get_queue('default')
        overdue = queue.enqueue_at(timezone.now() - timedelta(seconds=scheduled.OVERDUE + 5), time.sleep, 0)
        recent = queue.enqueue_at(timezone.now() - timedelta(seconds=1), time.sleep, 0)
        later = queue.enqueue_at(timezone.now() + timedelta(minutes=5), time.sleep, 0)

        self.assertEqual(scheduled.enqueue_overdue(['default']), [overdue.id])

        self.assertEqual(queue.get_job_ids(), [overdue.id])
        self.assertEqual(overdue.get_status(refresh=True), 'queued')
        self.assertEqual(sorted(ScheduledJobRegistry(queue=queue).get_job_ids()), sorted([recent.id, later.id]))
        self.assertEqual(scheduled.enqueue_overdue(['default']), [])


class DeadSchedulerTest(PrivateRedisTestCase):
    """A real worker started while a dead worker's scheduler lock is held: it runs no RQ scheduler."""

    CONFIG = {'relay_interval': 0.5, 'heartbeat_interval': 1, 'stuck_after': 10}
    STOCK = {'dispatch_on_commit': False, 'worker_guard': False, 'worker_loop': False, 'stuck_job_detection': False}

    def test_a_scheduled_job_runs_although_no_worker_runs_the_scheduler(self):
        hold_scheduler_locks()
        job = CountingJob.enqueue(schedule_at=timezone.now() + timedelta(seconds=1))
        self.worker()
        self.wait_for(lambda: run_count(job.job_id) == 1, timeout=scheduled.OVERDUE + 60,
                      message='the scheduled job ran')
        job.refresh_from_db()
        self.assertEqual(job.status, 'completed')
        self.assertEqual(get_connection('default').get(RQScheduler.get_locking_key('default')), DEAD_HOLDER.encode())

    def test_stock_netbox_leaves_it_waiting(self):
        # The fault, shown: without the plugin's loop the job waits for RQ's maintenance (10 minutes).
        self.CONFIG = self.STOCK
        hold_scheduler_locks()
        job = CountingJob.enqueue(schedule_at=timezone.now() + timedelta(seconds=1))
        self.worker()
        time.sleep(scheduled.OVERDUE + 10)
        self.assertEqual(run_count(job.job_id), 0)

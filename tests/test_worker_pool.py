"""
``netbox rqworker-pool`` (django-rq's pool of RQ workers): every worker it forks runs the plugin's loop, guard, relay
and heartbeat as ``netbox rqworker`` does, resumes after a Redis outage, and stops on SIGTERM. Real processes.
"""

import signal
import time

from core.models import Job

from netbox_safejobs.models import JobDispatch, RetryEvent, WorkerHeartbeat

from .base import PrivateRedisTestCase
from .jobs import CountingJob, run_count


class WorkerPoolTest(PrivateRedisTestCase):

    WORKER_COMMAND = ('rqworker-pool', '--num-workers', '2')  # on the queues every worker of the suite takes

    def test_pool_workers_guard_relay_heartbeat_resume_and_stop(self):
        pool = self.worker()
        self.wait_for(lambda: WorkerHeartbeat.objects.count() == 2, timeout=60, message='two worker heartbeats')
        self.assertEqual(sorted(WorkerHeartbeat.objects.values_list('queues', flat=True)),
                         ['high default low'] * 2)
        jobs = [CountingJob.enqueue() for _ in range(10)]
        self.wait_for(lambda: self.completed(jobs), timeout=60, message='jobs run by the pool')
        self.wait_for(lambda: not JobDispatch.objects.filter(job__in=jobs).exists(), timeout=10,
                      message='every lease released')
        self.assertEqual([run_count(job.job_id) for job in jobs], [1] * 10)  # counted in this Redis: before it stops

        self.server.stop()
        owed = [CountingJob.enqueue() for _ in range(10)]
        self.assertEqual(JobDispatch.objects.filter(job__in=owed, owed__isnull=False).count(), 10)
        time.sleep(3)
        self.server.start()
        back = time.time()
        try:
            self.wait_for(lambda: self.completed(owed), timeout=30, interval=0.05, message='owed jobs run')
        except AssertionError:
            pool.kill(signal.SIGTERM)
            raise AssertionError(pool.output[-6000:]) from None
        last = max(job.started.timestamp() for job in Job.objects.filter(pk__in=[job.pk for job in owed])) - back
        self.assertLess(last, 3.0, 'the last owed job started 3 s after Redis answered again')
        self.assertEqual([run_count(job.job_id) for job in owed], [1] * 10)
        self.assertFalse(RetryEvent.objects.filter(kind='duplicate_skipped').exists())

        started = time.monotonic()
        pool.process.send_signal(signal.SIGTERM)
        try:
            pool.process.wait(timeout=20)
        except Exception:
            raise AssertionError(f'the pool did not stop within 20 s of SIGTERM:\n{pool.output[-4000:]}') from None
        self.assertLess(time.monotonic() - started, 20)
        self.wait_for(lambda: not WorkerHeartbeat.objects.exists(), timeout=10, message='heartbeats removed')

"""
The tasks Redis behind Redis Sentinel, as NetBox configures it (``REDIS['tasks']['SENTINELS']``: django-rq's
``Sentinel(...).master_for()``, no socket timeout). Real ``redis-server`` and ``redis-server --sentinel`` processes on
loopback; skipped, saying why, where there is no ``redis-server``.
"""

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from core.models import Job
from django.test import SimpleTestCase

from netbox_safejobs import patches
from netbox_safejobs.models import JobDispatch, RetryEvent, WorkerHeartbeat
from netbox_safejobs.queues import fail_fast
from netbox_safejobs.testing.processes import RedisServer, free_port, wait_port
from netbox_safejobs.testing.queues import override_rq_queues, queues_behind_sentinel

from .base import SafeJobsTransactionTestCase, Worker, worker_env
from .jobs import CountingJob, run_count

SERVICE = 'mymaster'


class Interrupted(BaseException):
    """What RQ's SIGTERM handler raises in the middle of the worker's BLPOP (``StopRequested``)."""


class SentinelTest(SimpleTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        binary = shutil.which('redis-server')
        if not binary:
            raise cls.skipException('no redis-server on PATH: the Sentinel tests need redis-server and its --sentinel')
        cls.workdir = Path(tempfile.mkdtemp(prefix='safejobs-sentinel-test-'))
        cls.master = RedisServer(cls.workdir, binary=binary).start()
        cls.addClassCleanup(cls.master.stop)
        cls.sentinel_port = free_port()
        conf = cls.workdir / 'sentinel.conf'
        conf.write_text(f'port {cls.sentinel_port}\nbind 127.0.0.1\ndir {cls.workdir}\n'
                        f'sentinel monitor {SERVICE} 127.0.0.1 {cls.master.port} 1\n')
        sentinel = subprocess.Popen([binary, str(conf), '--sentinel'], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        cls.addClassCleanup(sentinel.wait)
        cls.addClassCleanup(sentinel.kill)
        if not wait_port(cls.sentinel_port, 20, process=sentinel):
            raise cls.skipException('redis-server --sentinel did not start (a redis-server built without Sentinel?)')

    def setUp(self):
        from redis import Redis
        from redis.sentinel import Sentinel

        # As django-rq builds it from NetBox's RQ_PARAMS.
        self.client = Sentinel([('127.0.0.1', self.sentinel_port)], sentinel_kwargs={}, socket_timeout=None,
                               socket_connect_timeout=10).master_for(SERVICE)
        self.plain = Redis(port=self.master.port)
        self.plain.flushall()
        self.addCleanup(self.client.connection_pool.disconnect)
        self.addCleanup(self.plain.connection_pool.disconnect)

    def interrupted_blpop(self, key):
        """A BLPOP interrupted by a signal whose handler raises, as RQ's worker is on SIGTERM while idle."""

        def handler(signum, frame):
            raise Interrupted

        previous = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with self.assertRaises(Interrupted):
                self.client.blpop([key], timeout=30)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def test_patch_in_place(self):
        self.assertIn('worker', patches.installed())
        # None: redis-py disconnects on an error by itself, or the plugin's wrapper is in place.
        self.assertIsNone(patches.sentinel_read_response())

    def test_interrupted_blpop_takes_no_later_task(self):
        self.interrupted_blpop('safejobs-test:queue')
        self.plain.rpush('safejobs-test:queue', 'task')  # the next push (the relay's, a web request's)
        time.sleep(0.3)
        self.assertEqual(self.plain.llen('safejobs-test:queue'), 1,
                         'the interrupted BLPOP stayed pending on a pooled connection and popped the next task')

    def test_commands_after_an_interrupted_blpop_answer(self):
        # RQ's teardown after StopRequested: register_death() is a MULTI/EXEC pipeline on the same pool. Run in a
        # thread: without the fix it waits for good (no socket timeout), behind the BLPOP still pending.
        self.interrupted_blpop('safejobs-test:idle')
        result = []

        def teardown():
            with self.client.pipeline() as pipe:
                pipe.hset('safejobs-test:worker', 'death', 'now')
                pipe.expire('safejobs-test:worker', 60)
                result.append(pipe.execute())

        thread = threading.Thread(target=teardown, daemon=True)
        thread.start()
        thread.join(5)
        self.assertFalse(thread.is_alive(), 'the pipeline after an interrupted BLPOP got no reply in 5 s')
        self.assertEqual(result, [[1, True]])
        self.assertIs(self.client.ping(), True)

    def test_fail_fast_keeps_sentinel(self):
        from redis.sentinel import SentinelConnectionPool

        probe = fail_fast(self.client)
        self.addCleanup(probe.connection_pool.disconnect)
        self.assertIsInstance(probe.connection_pool, SentinelConnectionPool)
        self.assertEqual(probe.connection_pool.service_name, SERVICE)
        self.assertIs(probe.ping(), True)
        self.assertEqual(probe.connection_pool.master_address, ('127.0.0.1', self.master.port))


class WorkerBehindSentinelTest(SafeJobsTransactionTestCase):
    """
    A real ``netbox rqworker`` whose tasks Redis is behind a real Sentinel (NetBox's ``SENTINELS`` settings): the
    master stopped while jobs commit and started again empty, and a failover to a replica. Every job runs once, and
    the worker still stops on SIGTERM afterwards.
    """

    SERVICE = 'safejobs'

    def setUp(self):
        super().setUp()
        self.binary = shutil.which('redis-server')
        if not self.binary:
            self.skipTest('no redis-server on PATH: the Sentinel tests need redis-server and its --sentinel')
        self.workdir = Path(tempfile.mkdtemp(prefix='safejobs-sentinel-worker-test-'))
        self.master = RedisServer(self.workdir / 'master', binary=self.binary).start()
        self.addCleanup(self.master.stop)

    def sentinel(self):
        port = free_port()
        conf = self.workdir / 'sentinel.conf'
        conf.write_text(f'port {port}\nbind 127.0.0.1\ndir {self.workdir}\n'
                        f'sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n'
                        f'sentinel down-after-milliseconds {self.SERVICE} 1000\n'
                        f'sentinel failover-timeout {self.SERVICE} 3000\n')
        process = subprocess.Popen([self.binary, str(conf), '--sentinel'], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        if not wait_port(port, 20, process=process):
            self.skipTest('redis-server --sentinel did not start (a redis-server built without Sentinel?)')
        queues = override_rq_queues(queues_behind_sentinel(port, self.SERVICE))
        queues.__enter__()
        self.addCleanup(queues.__exit__, None, None, None)
        return port

    def worker(self, sentinel_port):
        env = worker_env({'relay_interval': 1.0}, SAFEJOBS_REDIS_SENTINEL=sentinel_port, SAFEJOBS_REDIS_TASKS_DB=0)
        worker = Worker(burst=False, env=env)
        self.addCleanup(worker.kill)
        return worker

    def completed(self, jobs):
        return Job.objects.filter(pk__in=[job.pk for job in jobs], status='completed').count() == len(jobs)

    def wait_completed(self, worker, jobs, message, timeout=30):
        try:
            self.wait_for(lambda: self.completed(jobs), timeout=timeout, interval=0.05, message=message)
        except AssertionError:
            worker.kill(signal.SIGTERM)
            statuses = dict(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list('job_id', 'status'))
            raise AssertionError(f'{message}: not reached; jobs: {statuses}\n{worker.output[-6000:]}') from None

    def assert_stops(self, worker, within=10):
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            worker.kill()
            self.fail(f'the worker did not stop within {within} s of SIGTERM:\n{worker.output[-4000:]}')
        self.assertLess(time.monotonic() - started, within)

    def test_master_restarted_empty_while_jobs_commit(self):
        port = self.sentinel()
        worker = self.worker(port)
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='worker heartbeat')
        first = [CountingJob.enqueue() for _ in range(10)]
        self.wait_completed(worker, first, 'jobs run behind Sentinel', timeout=60)
        self.assertEqual([run_count(job.job_id) for job in first], [1] * 10)
        self.master.stop()
        during = [CountingJob.enqueue() for _ in range(10)]  # no caller error: owed
        self.assertEqual(JobDispatch.objects.filter(job__in=during, owed__isnull=False).count(), 10)
        time.sleep(4)
        self.master.start()
        self.wait_completed(worker, during, 'jobs committed while the master was down')
        self.assertEqual([run_count(job.job_id) for job in during], [1] * 10)
        self.assertFalse(RetryEvent.objects.filter(kind='duplicate_skipped').exists())
        self.assert_stops(worker)

    def test_failover_to_a_replica(self):
        replica = RedisServer(self.workdir / 'replica', binary=self.binary,
                              options=(*RedisServer.DEFAULT_OPTIONS, '--replicaof', '127.0.0.1',
                                       str(self.master.port))).start()
        self.addCleanup(replica.stop)
        port = self.sentinel()
        worker = self.worker(port)
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='worker heartbeat')
        first = [CountingJob.enqueue() for _ in range(5)]
        self.wait_completed(worker, first, 'jobs run behind Sentinel', timeout=60)
        self.master.stop()  # for good: the Sentinel promotes the replica
        during = [CountingJob.enqueue() for _ in range(10)]
        self.wait_completed(worker, during, 'jobs committed across the failover', timeout=60)
        self.assertEqual([run_count(job.job_id) for job in during], [1] * 10)
        self.assertFalse(RetryEvent.objects.filter(kind='duplicate_skipped').exists())
        self.assert_stops(worker)

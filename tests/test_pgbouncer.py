"""
Workers behind PgBouncer in transaction pooling mode, as NetBox's documentation deploys it: each transaction may run
on another server session, so nothing the plugin does may rely on a session (an advisory lock held across
statements, a session setting, a prepared statement). A real ``pgbouncer`` on loopback in front of this run's
PostgreSQL, real workers, a private Redis that is stopped and flushed. Skipped, saying why, without ``pgbouncer``
(Debian's package; ``scripts/dev test`` installs it as root).
"""

import signal
import time
import unittest

from core.models import Job
from django.db import connection

from netbox_safejobs import relay
from netbox_safejobs.models import JobDispatch, RetryEvent, WorkerHeartbeat
from netbox_safejobs.queues import get_push_queue
from netbox_safejobs.testing.processes import PgBouncer, pgbouncer_binary

from .base import PrivateRedisTestCase
from .jobs import CountingJob, run_count


@unittest.skipUnless(pgbouncer_binary(), 'pgbouncer is not installed (Debian: apt-get install pgbouncer)')
class PgBouncerTest(PrivateRedisTestCase):

    def setUp(self):
        super().setUp()
        settings = connection.settings_dict
        self.bouncer = PgBouncer(self.workdir, server=(settings['HOST'] or '127.0.0.1', int(settings['PORT'] or 5432)),
                                 user=settings['USER'])
        self.bouncer.start()
        self.addCleanup(self.bouncer.stop)

    def worker(self):
        return super().worker(SAFEJOBS_DB_HOST='127.0.0.1', SAFEJOBS_DB_PORT=self.bouncer.port, SAFEJOBS_DB_POOLER=1)

    def wait_completed(self, worker, jobs, message):
        try:
            self.wait_for(lambda: self.completed(jobs), timeout=30, interval=0.05, message=message)
        except AssertionError:
            worker.kill(signal.SIGTERM)
            raise AssertionError(f'{message}: not reached\n{worker.output[-6000:]}\n{self.bouncer.log()[-3000:]}') \
                from None

    def test_claim_relay_heartbeat_resume_and_stop_behind_transaction_pooling(self):
        worker = self.worker()
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='heartbeat through PgBouncer')
        jobs = [CountingJob.enqueue() for _ in range(10)]
        self.wait_completed(worker, jobs, 'jobs claimed and run through PgBouncer')
        self.assertEqual([run_count(job.job_id) for job in jobs], [1] * 10)

        # Redis away: owed, then sent by the relay (FOR UPDATE SKIP LOCKED, one transaction per batch).
        self.server.stop()
        owed = [CountingJob.enqueue() for _ in range(10)]
        time.sleep(2)
        self.server.start()
        back = time.time()
        self.wait_completed(worker, owed, 'owed jobs sent by the relay through PgBouncer')
        last = max(job.started.timestamp() for job in Job.objects.filter(pk__in=[job.pk for job in owed])) - back
        self.assertLess(last, 3.0)
        self.assertEqual([run_count(job.job_id) for job in owed], [1] * 10)

        # Redis flushed with tasks queued: owed again under the relay's transaction-scoped advisory lock.
        worker.kill(signal.SIGTERM)
        queued = [CountingJob.enqueue() for _ in range(5)]
        get_push_queue('default').connection.flushall()
        self.assertIsNone(get_push_queue('default').connection.get(relay.EPOCH_KEY))
        worker = self.worker()
        self.wait_completed(worker, queued, 'flushed jobs sent again through PgBouncer')
        self.assertEqual([run_count(job.job_id) for job in queued], [1] * 5)
        self.assertFalse(RetryEvent.objects.filter(kind__in=('duplicate_skipped', 'database_error')).exists())
        ours = [job.pk for job in jobs + owed + queued]
        self.wait_for(lambda: not JobDispatch.objects.filter(job__in=ours).exists(), timeout=10,
                      message='every lease released')

        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(timeout=20)
        self.assertLess(time.monotonic() - started, 20)
        self.wait_for(lambda: not WorkerHeartbeat.objects.exists(), timeout=10, message='heartbeat removed')

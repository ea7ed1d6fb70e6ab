"""events.record(): the row, the log line, redaction; every kind recorded with the right fields."""

import logging
import uuid

from core.models import Job
from django.db import transaction
from django.test import TestCase

from netbox_safejobs import compat, events
from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent
from netbox_safejobs.testing.fixtures import create_job

from .jobs import CountingJob


class RecordTest(TestCase):

    def test_every_kind(self):
        job = create_job('sync', queue_name='low')
        for kind in RetryEventKindChoices.values():
            with self.subTest(kind=kind):
                with self.assertLogs('netbox_safejobs.events', level='INFO') as logs:
                    event = events.record(kind, job=job, runner=CountingJob, attempt=2, delay=1.5, detail='why')
                event.refresh_from_db()
                self.assertEqual(event.kind, kind)
                self.assertEqual(event.job_id, job.pk)
                self.assertEqual(event.job_uuid, job.job_id)
                self.assertEqual(event.job_name, 'sync')
                self.assertEqual(event.queue, compat.rq_queue_name(job))
                self.assertEqual(event.runner, 'tests.jobs.CountingJob')
                self.assertEqual((event.attempt, event.delay, event.detail), (2, 1.5, 'why'))
                self.assertTrue(event.worker_host)
                self.assertGreater(event.worker_pid, 0)
                line = logs.output[0]
                self.assertIn(str(job.job_id), line)
                self.assertIn('attempt 2', line)
                self.assertIn('delay 1.500s', line)
                self.assertIn('why', line)

    def test_job_row_missing(self):
        job = Job(name='never committed', job_id=uuid.uuid4(), pk=987654)
        event = events.record(RetryEventKindChoices.KIND_GAVE_UP, job=job)
        self.assertIsNone(event.job_id)
        self.assertEqual(event.job_uuid, job.job_id)
        self.assertEqual(event.job_name, 'never committed')

    def test_log_levels(self):
        job_uuid = uuid.uuid4()
        with self.assertLogs('netbox_safejobs.events', level='INFO') as logs:
            events.record(RetryEventKindChoices.KIND_RETRY, job_uuid=job_uuid)
            events.record(RetryEventKindChoices.KIND_GAVE_UP, job_uuid=job_uuid)
            events.record(RetryEventKindChoices.KIND_FOUND_AFTER_RETRY, job_uuid=job_uuid)
        self.assertEqual([r.levelno for r in logs.records], [logging.WARNING, logging.ERROR, logging.INFO])

    def test_credentials_redacted(self):
        detail = ('ConnectionError: redis://:s3cret@redis.example:6379/0 refused; '
                  'postgresql://netbox:hunter2@db/netbox; password=hunter2 PASSWORD: "abc"')
        event = events.record(RetryEventKindChoices.KIND_DISPATCH_FAILED, job_uuid=uuid.uuid4(), detail=detail)
        event.refresh_from_db()
        for secret in ('s3cret', 'hunter2', 'abc'):
            self.assertNotIn(secret, event.detail)
        self.assertIn('redis://:***@redis.example:6379/0', event.detail)
        self.assertIn('postgresql://netbox:***@db/netbox', event.detail)

    def test_describe(self):
        self.assertEqual(events.describe(OSError('Connection refused.\n\tIs it running?.')),
                         'OSError: Connection refused. Is it running?')
        self.assertEqual(events.describe(KeyError()), 'KeyError')

    def test_failed_insert_does_not_poison_the_callers_transaction(self):
        with transaction.atomic():
            with self.assertLogs('netbox_safejobs.events', level='WARNING') as logs:
                # Too long for the column: the INSERT fails with a DataError inside the caller's transaction.
                self.assertIsNone(events.record('x' * 40, job_uuid=uuid.uuid4()))
            self.assertIn('event not stored', logs.output[0])
            Job.objects.create(name='still usable', job_id=uuid.uuid4())
        self.assertTrue(Job.objects.filter(name='still usable').exists())
        self.assertFalse(RetryEvent.objects.exists())


class RecordManyTest(TestCase):

    def test_one_insert_and_one_log_line_each(self):
        job = Job.objects.create(name='sync', job_id=uuid.uuid4())
        gone = uuid.uuid4()
        entries = [
            {'job_pk': job.pk, 'job_uuid': job.job_id, 'job_name': job.name, 'attempt': 1, 'detail': 'a'},
            {'job_pk': None, 'job_uuid': gone, 'job_name': 'gone', 'attempt': 2, 'detail': 'password=x'},
        ]
        with self.assertLogs('netbox_safejobs.events', level='INFO') as logs:
            with self.assertNumQueries(3):  # SAVEPOINT, one INSERT, RELEASE
                stored = events.record_many(RetryEventKindChoices.KIND_RECOVERED, entries)
        self.assertEqual(len(stored), 2)
        self.assertEqual(len(logs.output), 2)
        first, second = RetryEvent.objects.order_by('attempt')
        self.assertEqual((first.job_id, first.job_uuid, first.kind), (job.pk, job.job_id, 'recovered'))
        self.assertIsNone(second.job_id)
        self.assertEqual(second.detail, 'password=***')

    def test_nothing_to_record(self):
        self.assertEqual(events.record_many(RetryEventKindChoices.KIND_RECOVERED, []), [])

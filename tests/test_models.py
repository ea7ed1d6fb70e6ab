"""The RetryEvent model: creation, ordering, the job link nulled on Job deletion with the snapshot kept."""

import uuid
from datetime import timedelta

from core.models import Job
from django.db import connection
from django.test import TestCase
from django.utils import timezone

from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent


def make_job(name='test job'):
    return Job.objects.create(name=name, job_id=uuid.uuid4())


class RetryEventModelTest(TestCase):

    def test_create(self):
        job = make_job()
        event = RetryEvent.objects.create(
            job=job, job_uuid=job.job_id, job_name=job.name, runner='netbox.jobs.AsyncViewJob', queue='default',
            kind=RetryEventKindChoices.KIND_RETRY, attempt=1, delay=0.5, detail='row not visible yet',
            worker_host='worker-1', worker_pid=4242,
        )
        event.refresh_from_db()
        self.assertEqual(event.job, job)
        self.assertEqual(event.get_kind_display(), 'Retry')
        self.assertEqual(event.get_kind_color(), 'yellow')
        self.assertEqual(str(event), 'Retry: test job')
        self.assertLess(abs((timezone.now() - event.time).total_seconds()), 60)

    def test_default_ordering_newest_first(self):
        now = timezone.now()
        job_uuid = uuid.uuid4()
        old = RetryEvent.objects.create(job_uuid=job_uuid, kind='retry', time=now - timedelta(minutes=5))
        new = RetryEvent.objects.create(job_uuid=job_uuid, kind='gave_up', time=now)
        same_time = RetryEvent.objects.create(job_uuid=job_uuid, kind='retry', time=now)
        self.assertEqual(list(RetryEvent.objects.all()), [same_time, new, old])

    def test_job_deletion_nulls_link_and_keeps_snapshot(self):
        job = make_job('nightly sync')
        event = RetryEvent.objects.create(job=job, job_uuid=job.job_id, job_name=job.name, kind='retry')
        job_uuid = job.job_id
        job.delete()
        event.refresh_from_db()
        self.assertIsNone(event.job)
        self.assertEqual(event.job_uuid, job_uuid)
        self.assertEqual(event.job_name, 'nightly sync')

    def test_event_without_job_row(self):
        """Most events are about a job whose row is not there; only the UUID identifies it."""
        job_uuid = uuid.uuid4()
        event = RetryEvent.objects.create(job_uuid=job_uuid, kind=RetryEventKindChoices.KIND_GAVE_UP)
        self.assertIsNone(event.job_id)
        self.assertEqual(str(event), f'Gave up: {job_uuid}')

    def test_restricted_queryset(self):
        self.assertTrue(hasattr(RetryEvent.objects.all(), 'restrict'))

    def test_indexes_serve_ordering_and_filters(self):
        with connection.cursor() as cursor:
            cursor.execute(
                'SELECT indexdef FROM pg_indexes WHERE tablename = %s', [RetryEvent._meta.db_table]
            )
            indexes = [row[0] for row in cursor.fetchall()]
        self.assertTrue(any('("time" DESC, id DESC)' in i for i in indexes), indexes)
        self.assertTrue(any('(job_uuid, "time" DESC)' in i for i in indexes), indexes)
        self.assertTrue(any('(kind, "time" DESC)' in i for i in indexes), indexes)

"""purge_events(): deletes events older than the retention, keeps the others, 0 keeps everything, logs the count."""

import uuid
from datetime import timedelta

from django.test import TestCase, override_settings
from django.utils import timezone

from netbox_safejobs.models import RetryEvent
from netbox_safejobs.retention import purge_events


def make_event(age, kind='retry'):
    return RetryEvent.objects.create(job_uuid=uuid.uuid4(), kind=kind, time=timezone.now() - age)


class PurgeEventsTest(TestCase):

    def setUp(self):
        self.old = [make_event(timedelta(days=days)) for days in (91, 120, 400)]
        self.young = [make_event(timedelta(days=89)), make_event(timedelta(minutes=1), kind='gave_up')]

    def remaining(self):
        return set(RetryEvent.objects.values_list('pk', flat=True))

    def test_default_retention_is_90_days(self):
        with self.assertLogs('netbox_safejobs.retention', 'INFO') as logs:
            self.assertEqual(purge_events(), 3)
        self.assertEqual(self.remaining(), {e.pk for e in self.young})
        self.assertIn('Deleted 3 retry event(s) older than 90 day(s)', logs.output[0])

    @override_settings(PLUGINS_CONFIG={'netbox_safejobs': {'event_retention_days': 100}})
    def test_configured_retention(self):
        self.assertEqual(purge_events(), 2)
        self.assertEqual(self.remaining(), {e.pk for e in self.young} | {self.old[0].pk})

    @override_settings(PLUGINS_CONFIG={'netbox_safejobs': {'event_retention_days': 0}})
    def test_zero_keeps_everything(self):
        with self.assertLogs('netbox_safejobs.retention', 'INFO') as logs:
            self.assertEqual(purge_events(), 0)
        self.assertEqual(len(self.remaining()), 5)
        self.assertIn('retention is off', logs.output[0])

    def test_explicit_days_override_the_setting(self):
        self.assertEqual(purge_events(days=1), 4)
        self.assertEqual(self.remaining(), {self.young[1].pk})

    def test_batches_delete_everything_old(self):
        for _ in range(7):
            make_event(timedelta(days=200))
        self.assertEqual(purge_events(days=90, batch_size=3), 10)
        self.assertEqual(self.remaining(), {e.pk for e in self.young})

    def test_nothing_to_delete(self):
        self.assertEqual(purge_events(days=1000), 0)
        self.assertEqual(len(self.remaining()), 5)

"""
What record() does besides the row and the log line: the Prometheus counter, and NetBox event rules for the
"job gave up" and "dispatch failed" event types (a notification rule, as an operator would set one up).
"""

import uuid

from core.models import ObjectType
from django.test import TestCase
from extras.models import EventRule, Notification, NotificationGroup
from netbox.registry import registry
from prometheus_client import REGISTRY
from users.models import User

from netbox_safejobs import event_types, events
from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent

K = RetryEventKindChoices


def counted(kind):
    return REGISTRY.get_sample_value('netbox_safejobs_retry_events_total', {'kind': kind}) or 0


class MetricsTest(TestCase):

    def test_record_counts_events_by_kind(self):
        before = {kind: counted(kind) for kind in (K.KIND_RETRY, K.KIND_GAVE_UP)}
        events.record(K.KIND_RETRY, job_uuid=uuid.uuid4(), attempt=1)
        events.record(K.KIND_RETRY, job_uuid=uuid.uuid4(), attempt=2)
        events.record(K.KIND_GAVE_UP, job_uuid=uuid.uuid4())
        self.assertEqual(counted(K.KIND_RETRY), before[K.KIND_RETRY] + 2)
        self.assertEqual(counted(K.KIND_GAVE_UP), before[K.KIND_GAVE_UP] + 1)

    def test_exposed_by_the_metrics_view(self):
        # NetBox serves django-prometheus's export view at /metrics when METRICS_ENABLED is set (at start-up).
        from django.test import RequestFactory
        from django_prometheus.exports import ExportToDjangoView

        events.record(K.KIND_DUPLICATE_SKIPPED, job_uuid=uuid.uuid4())
        response = ExportToDjangoView(RequestFactory().get('/metrics'))
        self.assertEqual(response.status_code, 200)
        self.assertIn('netbox_safejobs_retry_events_total{kind="duplicate_skipped"}', response.content.decode())


class EventTypesTest(TestCase):

    @classmethod
    def setUpTestData(cls):
        cls.operator = User.objects.create_user(username='operator')
        group = NotificationGroup.objects.create(name='job alerts')
        group.users.add(cls.operator)
        object_type = ObjectType.objects.get_for_model(RetryEvent)
        cls.rule = EventRule.objects.create(
            name='safe jobs', event_types=[event_types.JOB_GAVE_UP, event_types.DISPATCH_FAILED],
            action_type='notification', action_object_type=ObjectType.objects.get_for_model(NotificationGroup),
            action_object_id=group.pk,
        )
        cls.rule.object_types.add(object_type)

    def notifications(self):
        return Notification.objects.filter(user=self.operator)

    def test_event_types_registered(self):
        self.assertEqual(str(registry['event_types'][event_types.JOB_GAVE_UP]), 'Job gave up (safe jobs)')
        self.assertIn(event_types.DISPATCH_FAILED, registry['event_types'])

    def test_gave_up_notifies_after_commit(self):
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            event = events.record(K.KIND_GAVE_UP, job_uuid=uuid.uuid4(), job_name='lost job')
        self.assertFalse(self.notifications().exists(), 'nothing before the commit')
        for callback in callbacks:
            callback()
        notification = self.notifications().get()
        self.assertEqual(notification.event_type, event_types.JOB_GAVE_UP)
        self.assertEqual(notification.object_id, event.pk)
        self.assertEqual(notification.object_repr, 'Gave up: lost job')

    def test_dispatch_failed_notifies(self):
        with self.captureOnCommitCallbacks(execute=True):
            event = events.record(K.KIND_DISPATCH_FAILED, job_uuid=uuid.uuid4(), detail='redis://:pw@r/0 down')
        notification = self.notifications().get()
        self.assertEqual(notification.event_type, event_types.DISPATCH_FAILED)
        self.assertEqual(notification.object_id, event.pk)

    def test_other_kinds_trigger_nothing(self):
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            events.record(K.KIND_RETRY, job_uuid=uuid.uuid4())
            events.record(K.KIND_RECOVERED, job_uuid=uuid.uuid4())
        self.assertEqual(callbacks, [])
        self.assertFalse(self.notifications().exists())

    def test_disabled_rule_triggers_nothing(self):
        EventRule.objects.filter(pk=self.rule.pk).update(enabled=False)
        with self.captureOnCommitCallbacks(execute=True):
            events.record(K.KIND_GAVE_UP, job_uuid=uuid.uuid4())
        self.assertFalse(self.notifications().exists())

    def test_failing_rule_never_raises(self):
        # A rule whose notification group is gone: NetBox's action fails; record() must not.
        EventRule.objects.filter(pk=self.rule.pk).update(action_object_id=999999)
        with self.assertLogs('netbox_safejobs.event_types', 'ERROR'):
            with self.captureOnCommitCallbacks(execute=True):
                event = events.record(K.KIND_GAVE_UP, job_uuid=uuid.uuid4())
        self.assertIsNotNone(event)
        self.assertTrue(RetryEvent.objects.filter(pk=event.pk).exists())

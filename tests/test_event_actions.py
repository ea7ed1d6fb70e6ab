"""
Event-rule actions registered by other plugins (NetBox 4.7, ``register_event_rule_action``) that push to RQ themselves:
their pushes go through the outbox. Real PostgreSQL, Redis and workers; the action is registered as a plugin does.
"""

import unittest

from core.models import ObjectType
from dcim.models import Site
from django_rq import get_connection, get_queue
from extras.models import EventRule
from users.models import User

from netbox_safejobs import compat
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.models import JobDispatch, RetryEvent
from netbox_safejobs.recovery import run_pass
from netbox_safejobs.testing.queues import closed_port_queues, override_rq_queues

from .base import SafeJobsTransactionTestCase, run_burst_worker
from .jobs import ACTIONS_KEY

SLUG = 'netbox_safejobs_tests.record'


def recorded():
    return sorted(value.decode() for value in get_connection('default').lrange(ACTIONS_KEY, 0, -1))


@unittest.skipIf(compat.event_rule_action_provider()[0] is None, 'no event-rule actions of plugins on this NetBox')
class PluginEventActionTest(SafeJobsTransactionTestCase):

    def setUp(self):
        super().setUp()
        from netbox.event_rules import EventRuleAction, register_event_rule_action
        from netbox.registry import registry

        class RecordAction(EventRuleAction):
            slug = SLUG
            label = 'Record (safejobs test)'

            def enqueue(self, *, event_rule, event_context, action_object, action_data):
                # What a plugin's action may do: push to RQ itself, not through a JobRunner.
                task = get_queue('default').enqueue('tests.jobs.record_action', event_context['data']['name'])
                assert task.id

        register_event_rule_action(RecordAction)
        self.addCleanup(registry['event_rule_actions'].pop, SLUG, None)
        rule = EventRule.objects.create(name='sites recorded', event_types=['object_created'], action_type=SLUG)
        rule.object_types.add(ObjectType.objects.get_for_model(Site))
        self.client.force_login(User.objects.create_superuser(username='actions'))

    def rows(self):
        return JobDispatch.objects.filter(job__isnull=True, runner='tests.jobs.record_action')

    def test_pushed_after_commit_and_run_once(self):
        self.assertEqual(self.create_site('site-a'), 201)
        (row,) = self.rows()
        self.assertIsNotNone(row.sent)
        run_burst_worker()
        self.assertEqual(recorded(), ['site-a'])
        # RQ ran it: the sweep is done with its row and sends nothing again.
        self.assertEqual(run_pass().pushed, [])
        self.assertFalse(self.rows().exists())

    def test_redis_away_the_push_is_owed_and_sent_when_it_answers(self):
        with override_rq_queues(closed_port_queues()):
            self.assertEqual(self.create_site('site-b'), 201)
        (row,) = self.rows()
        self.assertIsNotNone(row.owed)
        (event,) = RetryEvent.objects.filter(kind=Kind.KIND_DISPATCH_FAILED)
        self.assertEqual(event.job_uuid, row.job_uuid)
        self.assertEqual(run_pass().pushed, [row.job_uuid])
        run_burst_worker()
        self.assertEqual(recorded(), ['site-b'])

    def test_flushed_in_a_transaction_that_rolls_back_sends_nothing(self):
        def stored():
            self.assertEqual(self.rows().count(), 1, 'the push was not stored with the change')

        self.site_created_and_rolled_back(User.objects.get(username='actions'), stored)
        self.assertFalse(self.rows().exists())
        self.assertEqual(get_queue('default').count, 0)
        run_burst_worker()
        self.assertEqual(recorded(), [])

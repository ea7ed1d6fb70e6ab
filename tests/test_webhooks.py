"""
Event rules' webhooks through the outbox, and NetBox's "is a worker running?" checks: real PostgreSQL, real Redis
servers that are stopped and flushed, real workers, and a real HTTP receiver in this process.
"""

import json
import os
import signal
import time
import uuid
from pathlib import Path

from core.models import ObjectType
from dcim.models import Site
from django.test import override_settings
from extras.models import EventRule, Webhook
from rq.job import Job as RQJob
from users.models import User

from netbox_safejobs import webhooks
from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.dispatch import PUSH_MARKER
from netbox_safejobs.models import JobDispatch, RetryEvent, WorkerHeartbeat
from netbox_safejobs.testing.queues import closed_port_queues, override_rq_queues
from netbox_safejobs.testing.receiver import WebhookReceiver
from netbox_safejobs.workers import WorkerIdentity, beat

from .base import PrivateRedisTestCase, SafeJobsTransactionTestCase, Worker, worker_env


class WebhookTestCase(SafeJobsTransactionTestCase):

    def setUp(self):
        super().setUp()
        self.receiver = WebhookReceiver()
        self.addCleanup(self.receiver.stop)
        self.webhook = Webhook.objects.create(name='receiver', payload_url=self.receiver.url)
        rule = EventRule.objects.create(
            name='sites created', event_types=['object_created'], action_type='webhook',
            action_object_type=ObjectType.objects.get_for_model(Webhook), action_object_id=self.webhook.pk,
        )
        rule.object_types.add(ObjectType.objects.get_for_model(Site))
        self.user = User.objects.create_superuser(username='webhooks')
        self.client.force_login(self.user)

    def rows(self):
        return JobDispatch.objects.filter(job__isnull=True)


class WebhookOutboxTest(WebhookTestCase):
    """The web process's side: stored with the change, pushed once it commits, never for a rolled-back one."""

    def test_pushed_after_commit_with_the_plugin_marker(self):
        self.assertEqual(self.create_site('site-a'), 201)
        (row,) = self.rows()
        self.assertIsNotNone(row.sent)
        self.assertEqual((row.runner, row.name), (webhooks.WEBHOOK_TASK, 'Webhook receiver dcim.site object_created'))
        task = RQJob.fetch(str(row.job_uuid), connection=self.redis)
        self.assertEqual(task.func_name, webhooks.WEBHOOK_TASK)
        self.assertEqual(task.meta.get(PUSH_MARKER), 1)

    def test_flushed_inside_a_transaction_that_rolls_back_sends_nothing(self):
        def stored():
            # The events were flushed (event_tracking's exit) and the webhook stored with the change, still to
            # commit or roll back; nothing is pushed yet, whatever django-rq's COMMIT_MODE (NetBox's tests run 'auto').
            self.assertEqual(self.rows().count(), 1, 'the webhook was not stored with the change')
            self.assertEqual(self.redis.llen('rq:queue:default'), 0, 'pushed before the commit')

        self.site_created_and_rolled_back(self.user, stored)
        self.assertFalse(self.rows().exists())
        self.assertEqual(self.redis.llen('rq:queue:default'), 0)

    def test_redis_away_the_request_succeeds_and_the_webhook_is_owed(self):
        with override_rq_queues(closed_port_queues()):
            self.assertEqual(self.create_site('site-b'), 201)
        (row,) = self.rows()
        self.assertIsNotNone(row.owed)
        (event,) = RetryEvent.objects.filter(kind=Kind.KIND_DISPATCH_FAILED)
        self.assertEqual(event.job_uuid, row.job_uuid)
        self.assertIn('webhook is stored as owed', event.detail)


class DeletedWebhookTest(WebhookTestCase):
    """An operator's delete of a queued webhook task in Background Tasks is a decision: it is never sent again."""

    def test_deleted_in_background_tasks_is_not_sent_again(self):
        from core.utils import delete_rq_job

        from netbox_safejobs.recovery import run_pass

        from .base import run_burst_worker

        self.assertEqual(self.create_site('deleted'), 201)
        self.assertEqual(self.create_site('kept'), 201)
        deleted, kept = (row.job_uuid for row in self.rows().order_by('pk'))
        delete_rq_job(str(deleted))
        self.assertEqual(list(self.rows().values_list('job_uuid', flat=True)), [kept])
        (event,) = RetryEvent.objects.filter(kind=Kind.KIND_OPERATOR_STOPPED)
        self.assertEqual(event.job_uuid, deleted)
        self.assertIn('Task deleted from Background Tasks', event.detail)
        # The relay's sweep finds the task gone, and Redis losing its data does not bring it back either.
        self.redis.flushdb()
        self.assertEqual(run_pass().pushed, [kept])
        run_burst_worker()
        self.wait_for(lambda: self.receiver.names() == ['kept'], timeout=30, message='the kept webhook delivered')
        time.sleep(1)
        self.assertEqual(self.receiver.names(), ['kept'], 'the deleted webhook was sent')


class WorkerCheckTest(SafeJobsTransactionTestCase):
    """NetBox's "is a worker running?" answered from the heartbeats while Redis is away."""

    def test_answered_from_heartbeats_while_redis_is_away(self):
        from utilities.rqworker import any_workers_for_queue, get_workers_for_queue

        with override_rq_queues(closed_port_queues()):
            # Nobody heartbeats: "no worker" (NetBox then refuses with its own message), not Redis's error (a 500).
            self.assertIs(any_workers_for_queue('default'), False)
            self.assertEqual(get_workers_for_queue('default'), 0)
            identity = WorkerIdentity(id=uuid.uuid4(), name='w', host='h', pid=1, queues=('high', 'default'))
            beat(identity)
            self.assertIs(any_workers_for_queue('default'), True)
            self.assertEqual(get_workers_for_queue('default'), 1)
            self.assertIs(any_workers_for_queue('low'), False)  # that worker does not listen on it
            WorkerHeartbeat.objects.update(seen='2000-01-01T00:00:00Z')
            self.assertIs(any_workers_for_queue('default'), False)  # stale: no longer vouches
        # Redis answering and knowing no worker: NetBox's own answer stands too.
        self.assertIs(any_workers_for_queue('default'), False)


class PrivateRedisWebhookTestCase(WebhookTestCase, PrivateRedisTestCase):
    """The webhook rule and receiver of ``WebhookTestCase``, a private Redis and real workers on it."""


class WebhookDeliveryTest(PrivateRedisWebhookTestCase):
    """Real workers on a private Redis: outages, flushes, failed receivers and killed work horses."""

    def delivered(self, names):
        return lambda: self.receiver.names() == sorted(names)

    def test_outage_every_webhook_delivered_once_within_two_seconds(self):
        worker = self.worker()
        self.assertEqual(self.create_site('warm'), 201)
        self.wait_for(self.delivered(['warm']), timeout=60, message='worker ready')
        self.server.stop()
        names = [f'outage-{i}' for i in range(10)]
        self.assertEqual([self.create_site(name) for name in names], [201] * 10)
        self.assertEqual(self.rows().filter(owed__isnull=False).count(), 10)
        time.sleep(2)
        self.server.start()
        back = time.time()
        try:
            self.wait_for(self.delivered(['warm', *names]), timeout=30, interval=0.05, message='every webhook')
        except AssertionError:
            worker.kill(signal.SIGTERM)
            raise AssertionError(f'{self.receiver.names()}\n{worker.output[-5000:]}') from None
        # The relay's part: the first webhook within 2 s of Redis answering (the harness's webhooks_outage measures
        # the last, with two workers). The last also waits for one worker to send the other nine, one work horse each:
        # on a loaded CI machine that alone can take seconds.
        arrivals = [t for body, t in zip(self.receiver.bodies, self.receiver.times, strict=True)
                    if body.get('data', {}).get('name') in names]
        self.assertLess(min(arrivals) - back, 2.0, 'the first webhook reached the receiver 2 s after Redis')
        self.assertLess(max(arrivals) - back, 10.0, 'the last webhook reached the receiver 10 s after Redis')
        self.wait_for(lambda: not self.rows().exists(), timeout=10, message='rows of delivered webhooks gone')

    def test_redis_flushed_with_webhooks_queued_every_one_delivered_once(self):
        names = [f'flushed-{i}' for i in range(5)]
        self.assertEqual([self.create_site(name) for name in names], [201] * 5)
        self.assertEqual(self.rows().filter(sent__isnull=False).count(), 5)
        self.redis_private().flushall()
        self.worker()
        self.wait_for(self.delivered(names), timeout=60, message='every webhook delivered')
        time.sleep(1.5)
        self.assertEqual(self.receiver.names(), sorted(names), 'a webhook was delivered twice')

    def redis_private(self):
        from netbox_safejobs.queues import get_push_queue

        return get_push_queue('default').connection

    def test_failed_attempts_retried_then_kept_and_sent_again_by_an_operator(self):
        self.receiver.status = 500
        with override_settings(RQ_RETRY_MAX=1, RQ_RETRY_INTERVAL=1):
            self.assertEqual(self.create_site('failing'), 201)
        self.worker()
        self.wait_for(lambda: self.rows().filter(gave_up__isnull=False).exists(), timeout=60, message='gave up')
        self.assertEqual(self.receiver.names(), ['failing', 'failing'])
        failed = list(RetryEvent.objects.filter(kind=Kind.KIND_WEBHOOK_FAILED).order_by('time')
                      .values_list('attempt', 'delay'))
        self.assertEqual(failed, [(1, 1.0), (2, None)])
        self.receiver.status = 200
        self.assertEqual(webhooks.resend(JobDispatch.objects.all(), user=self.user), 1)
        self.wait_for(lambda: not self.rows().exists(), timeout=30, message='sent again and delivered')
        self.assertEqual(self.receiver.names(), ['failing'] * 3)
        self.assertTrue(RetryEvent.objects.filter(kind=Kind.KIND_RECOVERED, detail__contains='by webhooks').exists())

    def test_work_horse_killed_mid_request_the_webhook_is_sent_again(self):
        worker = self.worker()
        self.receiver.delay = 60  # the first request hangs until its work horse is killed
        self.assertEqual(self.create_site('hung'), 201)
        self.wait_for(lambda: self.receiver.arrivals and worker.children(), timeout=60, message='request under way')
        self.receiver.delay = 0
        for pid in worker.children():
            os.kill(pid, signal.SIGKILL)
        self.wait_for(lambda: 'hung' in self.receiver.names(), timeout=30, message='sent again')
        self.wait_for(lambda: not self.rows().exists(), timeout=10, message='row gone')
        event = RetryEvent.objects.get(kind=Kind.KIND_WEBHOOK_FAILED)
        self.assertIn('owed again', event.detail)


PROBE_SCRIPT = """
from extras.scripts import Script


class Probe(Script):
    class Meta:
        name = 'safe jobs probe'

    def run(self, data, commit):
        self.log_info('probe ran')
        return 'probe done'
"""


class WebhookOperatorTest(PrivateRedisWebhookTestCase):
    """What a worker without the plugin, an operator's Requeue and a slow receiver do to a webhook in the outbox."""

    def private_worker(self, plugins_config=None, burst=False, **extra):
        env = worker_env(plugins_config, SAFEJOBS_REDIS_PORT=self.server.port, SAFEJOBS_REDIS_TASKS_DB=0, **extra)
        worker = Worker(burst=burst, env=env)
        self.addCleanup(worker.kill)
        return worker

    def test_sent_by_a_worker_without_the_plugin_is_not_sent_again(self):
        """A rolling upgrade: a worker without the plugin runs the task; the guarded workers' sweep leaves it sent."""
        from netbox_safejobs.recovery import run_pass

        self.assertEqual(self.create_site('stock'), 201)
        stock = self.private_worker(burst=True, SAFEJOBS_PLUGIN='0')
        self.assertEqual(stock.wait(), 0, stock.output[-3000:])
        self.assertEqual(self.receiver.names(), ['stock'])
        self.assertEqual(self.rows().count(), 1, 'the worker without the plugin left the row as it was')
        self.assertEqual(run_pass().pushed, [])
        self.assertFalse(self.rows().exists())
        self.worker()
        time.sleep(3)
        self.assertEqual(self.receiver.names(), ['stock'], 'sent again')

    def test_requeued_in_background_tasks_after_it_gave_up(self):
        from core.utils import requeue_rq_job

        self.receiver.status = 500
        with override_settings(RQ_RETRY_MAX=0):
            self.assertEqual(self.create_site('requeued'), 201)
        self.worker()
        self.wait_for(lambda: self.rows().filter(gave_up__isnull=False).exists(), timeout=60, message='gave up')
        self.receiver.status = 200
        requeue_rq_job(str(self.rows().get().job_uuid))
        self.wait_for(self.delivered_twice('requeued'), timeout=30, message='sent again after the Requeue')
        self.wait_for(lambda: not self.rows().exists(), timeout=10, message='row of the delivered webhook gone')
        self.assertTrue(RetryEvent.objects.filter(kind=Kind.KIND_RECOVERED,
                                                  detail__contains='requeued in Background Tasks').exists())

    def delivered_twice(self, name):
        return lambda: self.receiver.names() == [name, name]

    def test_a_webhook_being_sent_heartbeats(self):
        """A slow receiver: the send's lease heartbeats, so it is not taken for a dead one and sent by another."""
        self.receiver.delay = 4
        self.assertEqual(self.create_site('slow'), 201)
        self.private_worker({'heartbeat_interval': 1, 'stuck_after': 10, 'relay_interval': 0.5})
        self.wait_for(lambda: self.rows().filter(claimed__isnull=False, heartbeat__isnull=False).exists(),
                      timeout=60, message='lease heartbeat while the receiver takes its time')
        self.wait_for(lambda: self.receiver.names() == ['slow'], timeout=30, message='delivered')
        self.wait_for(lambda: not self.rows().exists(), timeout=10, message='row gone')


class ScriptRunTest(PrivateRedisWebhookTestCase):
    """A script run from the REST API and from the UI while Redis is away: accepted, and run once when it is back."""

    def setUp(self):
        super().setUp()
        from django.conf import settings
        from extras.models import Script, ScriptModule

        path = Path(settings.SCRIPTS_ROOT) / 'safejobs_probe.py'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PROBE_SCRIPT)
        self.addCleanup(path.unlink, missing_ok=True)
        module = ScriptModule.objects.create(file_root='scripts', file_path=path.name)
        self.script = Script.objects.get(module=module, name='Probe')

    def runs(self):
        from core.models import Job

        return Job.objects.filter(object_type=ObjectType.objects.get_for_model(self.script), object_id=self.script.pk)

    def test_rest_api_and_ui_runs_accepted_while_redis_is_away(self):
        worker = self.worker()
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='worker heartbeat')
        self.server.stop()
        response = self.client.post(f'/api/extras/scripts/{self.script.pk}/',
                                    data=json.dumps({'data': {}, 'commit': True}), content_type='application/json')
        self.assertEqual(response.status_code, 200, response.content[:500])
        response = self.client.post(f'/extras/scripts/{self.script.pk}/', {'_commit': 'on', '_notifications': 'always'})
        self.assertEqual(response.status_code, 302, 'the UI did not accept the run')
        self.assertEqual(self.runs().count(), 2)
        self.server.start()
        try:
            self.wait_for(lambda: self.runs().filter(status='completed').count() == 2, timeout=30,
                          message='both runs completed')
        except AssertionError:
            worker.kill(signal.SIGTERM)
            raise AssertionError(f'{list(self.runs().values_list("status", "error"))}\n{worker.output[-5000:]}') \
                from None
        self.assertFalse(RetryEvent.objects.filter(kind=Kind.KIND_DUPLICATE_SKIPPED).exists())

    def test_no_worker_netbox_says_so(self):
        # Redis answers and knows no worker, and none heartbeats: NetBox's own message.
        response = self.client.post(f'/extras/scripts/{self.script.pk}/', {'_commit': 'on', '_notifications': 'always'},
                                    follow=True)
        self.assertContains(response, 'RQ worker process not running')
        self.assertFalse(self.runs().exists())

    def test_redis_away_and_no_worker_netbox_says_so_instead_of_a_500(self):
        # Redis raises and no worker heartbeats (every worker restarting while Redis restarts, as the fault explorer
        # did): NetBox's own refusal, not Redis's ConnectionError as a 500.
        self.server.stop()
        response = self.client.post(f'/api/extras/scripts/{self.script.pk}/',
                                    data=json.dumps({'data': {}, 'commit': True}), content_type='application/json')
        self.assertEqual(response.status_code, 503, response.content[:500])
        self.assertIn(b'RQ worker process not running', response.content)
        response = self.client.post(f'/extras/scripts/{self.script.pk}/', {'_commit': 'on', '_notifications': 'always'},
                                    follow=True)
        self.assertContains(response, 'RQ worker process not running')
        self.assertFalse(self.runs().exists())

    def test_background_api_request_accepted_while_redis_is_away(self):
        from core.models import Job

        worker = self.worker()
        self.wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=60, message='worker heartbeat')
        self.server.stop()
        response = self.client.post('/api/dcim/sites/?background=true', content_type='application/json',
                                    data=json.dumps([{'name': f'background-{i}', 'slug': f'background-{i}'}
                                                     for i in range(2)]))
        self.assertLess(response.status_code, 300, response.content[:500])
        self.server.start()
        jobs = Job.objects.filter(name__startswith='Bulk create')
        self.assertEqual(jobs.count(), 1)
        try:
            self.wait_for(lambda: jobs.filter(status='completed').exists(), timeout=30,
                          message='the background request ran')
        except AssertionError:
            raise AssertionError(f'{list(jobs.values_list("status", "error"))}\n{worker.output[-3000:]}') from None
        self.assertEqual(Site.objects.filter(slug__startswith='background-').count(), 2)


class ResendViewTest(WebhookTestCase):
    """The Send again action of a webhook that gave up: permission, a row that did not give up, GET."""

    def gave_up(self):
        from django.utils import timezone

        with override_rq_queues(closed_port_queues()):
            self.assertEqual(self.create_site('gave-up'), 201)
        row = self.rows().get()
        JobDispatch.objects.filter(pk=row.pk).update(owed=None, sent=timezone.now(), claimed=timezone.now(),
                                                     gave_up=timezone.now())
        return row

    def test_send_again(self):
        row = self.gave_up()
        url = f'/plugins/safejobs/jobs-in-flight/{row.pk}/'
        self.assertContains(self.client.get(url), 'id="safejobs-resend"')
        response = self.client.post(f'{url}resend/', follow=True)
        self.assertContains(response, 'The webhook is sent again')
        row.refresh_from_db()
        self.assertEqual((row.gave_up, row.claimed, row.state), (None, None, 'owed'))
        self.assertNotContains(self.client.get(url), 'id="safejobs-resend"')
        response = self.client.post(f'{url}resend/', follow=True)
        self.assertContains(response, 'Only a webhook that gave up can be sent again')
        self.assertEqual(self.client.get(f'{url}resend/').status_code, 302)

    def test_needs_the_change_permission(self):
        from users.models import ObjectPermission

        row = self.gave_up()
        user = User.objects.create_user(username='viewer')
        permission = ObjectPermission.objects.create(name='view in flight', actions=['view'])
        permission.object_types.add(ObjectType.objects.get_for_model(JobDispatch))
        permission.users.add(user)
        self.client.force_login(user)
        url = f'/plugins/safejobs/jobs-in-flight/{row.pk}/'
        self.assertNotContains(self.client.get(url), 'id="safejobs-resend"')
        self.assertEqual(self.client.post(f'{url}resend/').status_code, 403)
        row.refresh_from_db()
        self.assertIsNotNone(row.gave_up)

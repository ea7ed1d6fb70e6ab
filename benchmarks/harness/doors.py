"""
The other doors: event rules' webhooks and script runs, pushed outside ``JobRunner.enqueue`` or gated on Redis, during
a Redis outage, after a flush, and for changes whose transaction rolled back.
"""

import json
import time
import uuid
from collections import Counter
from pathlib import Path

from .core import HARNESS_TAG, WorkerPool, scenario
from .support import wait_until_settled, while_redis_down

__all__ = (
    'Doors',
    'scenario_script_outage',
    'scenario_webhooks_flushed',
    'scenario_webhooks_outage',
    'scenario_webhooks_rolled_back',
)


class Doors:
    """
    What the door scenarios share: a webhook receiver in this process, an event rule that sends a webhook for every
    harness tag created, and a logged-in client of NetBox's REST API and UI (Django's test client, in this process:
    each request goes through NetBox's middleware, event tracking included). ``close()`` removes the rule.
    """

    def __init__(self):
        from core.models import ObjectType
        from django.test import Client
        from extras.models import EventRule, Tag, Webhook
        from users.models import User

        from netbox_safejobs.testing.receiver import WebhookReceiver

        self.receiver = WebhookReceiver()
        self.webhook, _ = Webhook.objects.update_or_create(name=f'{HARNESS_TAG}receiver',
                                                           defaults={'payload_url': self.receiver.url})
        self.rule, _ = EventRule.objects.update_or_create(
            name=f'{HARNESS_TAG}tags', defaults={
                'event_types': ['object_created'], 'action_type': 'webhook', 'enabled': True,
                'action_object_type': ObjectType.objects.get_for_model(Webhook), 'action_object_id': self.webhook.pk,
            })
        self.rule.object_types.set([ObjectType.objects.get_for_model(Tag)])
        user, _ = User.objects.get_or_create(username=f'{HARNESS_TAG}operator', defaults={'is_superuser': True})
        # An exception in a view is a 500 for the caller, as behind a web server, not an exception here.
        self.client = Client(raise_request_exception=False)
        self.client.force_login(user)

    def create_tag(self, name):
        """POST /api/extras/tags/: the HTTP status."""
        return self.client.post('/api/extras/tags/', data=json.dumps({'name': name, 'slug': name}),
                                content_type='application/json').status_code

    def delivered(self, names, timeout, idle=10):
        """Wait until every name was delivered, or nothing arrived for ``idle`` s; the receiver's names."""
        deadline, last, last_change = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.receiver.names()
            if set(names) <= set(got):
                return got
            if len(got) != last:
                last, last_change = len(got), time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
            time.sleep(0.05)
        return self.receiver.names()

    def outcome(self, names, back=None, failed_requests=0):
        got = Counter(name for name in self.receiver.names() if name in set(names))
        times = [t for body, t in zip(self.receiver.bodies, self.receiver.times, strict=True)
                 if body.get('data', {}).get('name') in set(names)]
        return {
            'webhooks': len(names), 'requests_failed': failed_requests,
            'webhooks_delivered': len(got), 'webhooks_lost': len(set(names) - set(got)),
            'webhooks_twice': sum(1 for count in got.values() if count > 1),
            'first_delivered_s_after_redis_back': round(min(times) - back, 2) if back and times else None,
            'delivered_s_after_redis_back': (round(max(times) - back, 2) if back and times and len(got) == len(names)
                                             else None),
        }

    def close(self):
        from extras.models import EventRule, Webhook

        EventRule.objects.filter(pk=self.rule.pk).delete()
        Webhook.objects.filter(pk=self.webhook.pk).delete()
        self.receiver.stop()


@scenario
def scenario_webhooks_outage(ctx, mode, opts, runs_file):
    """
    Webhooks during a 5 s Redis outage, workers running throughout: tags created through the REST API while Redis is
    down, each with an event rule's webhook. Every request must succeed and every webhook arrive once, soon after
    Redis answers again.
    """
    doors = Doors()
    pool = WorkerPool(ctx, mode, runs_file)
    names = [f'{HARNESS_TAG}{mode}-outage-{i}' for i in range(opts.fault_jobs)]
    try:
        pool.wait_ready()
        warm = f'{HARNESS_TAG}{mode}-warm'
        doors.create_tag(warm)
        doors.delivered([warm], timeout=30)
        statuses, back = while_redis_down(ctx, 5, lambda: [doors.create_tag(name) for name in names])
        doors.delivered(names, timeout=opts.timeout, idle=15)
        time.sleep(2)  # a second copy of any webhook would arrive by now
        return doors.outcome(names, back, failed_requests=sum(1 for status in statuses if status >= 300))
    finally:
        pool.stop()
        doors.close()


@scenario
def scenario_webhooks_flushed(ctx, mode, opts, runs_file):
    """
    Redis flushed (FLUSHALL, a failover to an empty replica) with webhooks queued and no worker running yet: once the
    workers start, every webhook must arrive, once.
    """
    from django_rq import get_connection

    doors = Doors()
    names = [f'{HARNESS_TAG}{mode}-flushed-{i}' for i in range(opts.fault_jobs)]
    try:
        statuses = [doors.create_tag(name) for name in names]
        get_connection('default').flushall()
        pool = WorkerPool(ctx, mode, runs_file)
        try:
            doors.delivered(names, timeout=opts.timeout, idle=20)
            time.sleep(2)
        finally:
            pool.stop()
        return doors.outcome(names, failed_requests=sum(1 for status in statuses if status >= 300))
    finally:
        doors.close()


@scenario
def scenario_webhooks_rolled_back(ctx, mode, opts, runs_file):
    """
    A change whose events are flushed inside a transaction that then rolls back (a script or plugin wrapping NetBox's
    event tracking in its own ``transaction.atomic()``): no webhook may be sent for it. Run with django-rq's
    ``COMMIT_MODE`` ``auto`` (django-rq before 3.0, and NetBox's own test configuration): under the default of
    django-rq 3.0 and later, ``on_db_commit``, stock NetBox defers the push to the commit too.
    """
    from django.conf import settings
    from django.db import transaction
    from django.test import RequestFactory, override_settings
    from extras.models import Tag
    from netbox.context_managers import event_tracking
    from users.models import User

    class Rollback(Exception):
        pass

    def rolled_back(names, user):
        for name in names:
            request = RequestFactory().post('/api/extras/tags/')
            request.user, request.id = user, uuid.uuid4()
            try:
                with transaction.atomic():
                    with event_tracking(request):
                        Tag.objects.create(name=name, slug=name)
                    raise Rollback
            except Rollback:
                pass

    doors = Doors()
    pool = WorkerPool(ctx, mode, runs_file)
    names = [f'{HARNESS_TAG}{mode}-rolled-back-{i}' for i in range(opts.fault_jobs)]
    try:
        pool.wait_ready()
        user = User.objects.get(username=f'{HARNESS_TAG}operator')
        with override_settings(RQ={**getattr(settings, 'RQ', {}), 'COMMIT_MODE': 'auto'}):
            rolled_back(names, user)
        committed = f'{HARNESS_TAG}{mode}-committed'
        doors.create_tag(committed)  # the workers deliver this one: the rolled-back ones had their chance before it
        doors.delivered([committed], timeout=60)
        time.sleep(2)
        sent = sum(1 for name in doors.receiver.names() if name in set(names))
        return {'webhooks': len(names), 'webhooks_rolled_back_sent': sent, 'commit_mode': 'auto',
                'ghost_rows': Tag.objects.filter(slug__in=names).count()}
    finally:
        pool.stop()
        doors.close()


PROBE_SCRIPT = """
from extras.scripts import Script


class SafejobsHarnessProbe(Script):
    class Meta:
        name = 'safejobs harness probe'

    def run(self, data, commit):
        return 'ran'
"""


@scenario
def scenario_script_outage(ctx, mode, opts, runs_file):
    """
    A script run through the REST API and through the UI while Redis is away, workers running: accepted (NetBox's
    worker check answered), and run once each when Redis answers again.
    """
    from core.models import Job, ObjectType
    from django.conf import settings
    from django.urls import reverse
    from extras.models import Script, ScriptModule

    path = Path(settings.SCRIPTS_ROOT) / 'safejobs_harness_probe.py'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PROBE_SCRIPT)
    ScriptModule.objects.filter(file_path=path.name).delete()
    module = ScriptModule.objects.create(file_root='scripts', file_path=path.name)
    script = Script.objects.get(module=module)
    runs = Job.objects.filter(object_type=ObjectType.objects.get_for_model(Script), object_id=script.pk)
    doors = Doors()
    pool = WorkerPool(ctx, mode, runs_file)
    tries = max(1, opts.fault_jobs // 4)
    try:
        pool.wait_ready()
        time.sleep(2)  # the plugin's workers heartbeat at start-up; stock ones registered with Redis

        def run_scripts():
            api = [doors.client.post(f'/api/extras/scripts/{script.pk}/', content_type='application/json',
                                     data=json.dumps({'data': {}, 'commit': True})).status_code
                   for _ in range(tries)]
            ui = [doors.client.post(f'/extras/scripts/{script.pk}/', {'_commit': 'on', '_notifications': 'never'})
                  for _ in range(tries)]
            return api, ui

        (api, ui), back = while_redis_down(ctx, 5, run_scripts)
        accepted_api = sum(1 for status in api if status == 200)
        # The UI redirects to the run's result page when it enqueued one, and answers the form again otherwise.
        result_page = reverse('extras:script_result', kwargs={'job_pk': 0}).rsplit('0/', 1)[0]
        accepted_ui = sum(1 for response in ui if response.status_code == 302 and response.url.startswith(result_page))
        ids = list(runs.values_list('job_id', flat=True))
        wait_until_settled(ids, timeout=opts.timeout, idle=15, pool=pool)
        done = runs.filter(status='completed').count()
        started = [s.timestamp() for s in runs.filter(status='completed').values_list('started', flat=True)]
        return {
            'script_runs': 2 * tries, 'runs_accepted_api': accepted_api, 'runs_accepted_ui': accepted_ui,
            'requests_failed': sum(1 for status in api if status >= 500) + sum(1 for r in ui if r.status_code >= 500),
            'completed': done, 'runs_lost': runs.filter(status__in=('pending', 'scheduled', 'running')).count(),
            'all_ran_s_after_redis_back': round(max(started) - back, 2) if started and done == len(ids) else None,
        }
    finally:
        pool.stop()
        doors.close()
        runs.delete()
        module.delete()
        path.unlink(missing_ok=True)

"""
Jobs in flight: the states derived by the database's clock (agreeing with the liveness pass), the list and detail
pages, the REST endpoint, permissions, the stored push never shown, the dashboard widget and the navigation entry.
"""

import uuid
from datetime import timedelta

from core.models import Job
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from users.models import ObjectPermission
from utilities.testing import APITestCase, APIViewTestCases, TestCase
from utilities.testing.utils import disable_warnings

from netbox_safejobs import liveness
from netbox_safejobs.choices import JobDispatchStateChoices as S
from netbox_safejobs.in_flight import dispatch_queryset, state_counts
from netbox_safejobs.models import JobDispatch, RetryEvent, WorkerHeartbeat
from netbox_safejobs.widgets import RetryEventsWidget

LIST_URL = 'plugins:netbox_safejobs:jobdispatch_list'
API_LIST = 'plugins-api:netbox_safejobs-api:jobdispatch-list'
# A payload that must never appear anywhere: not the plugin's format, recognisable in any output.
SECRET = b'SECRET-PAYLOAD-never-shown'


def make_dispatches():
    """
    One row per state, and the edge cases of the stuck rule, by name:

    - ``written``: just written; ``lost``: written 5 minutes ago and never stamped (owed by age);
    - ``owed``, ``sent``;
    - ``running``: claimed by a live worker; ``stuck``: claimed, its worker's heartbeat and its own 5 minutes old;
    - ``gone``: claimed by a worker without a heartbeat row, long ago (stuck);
    - ``long``: claimed long ago by a dead worker but its work horse heartbeats (claimed);
    - ``immediate``: claimed long ago without a worker (never stuck);
    - ``scheduled``: sent, its Job scheduled an hour from now; ``due``: sent, its Job's scheduled time passed (sent).
    """
    now = timezone.now()
    old = now - timedelta(minutes=5)
    live = WorkerHeartbeat.objects.create(id=uuid.uuid4(), name='w-live', host='host-live', pid=11, version='t',
                                          started=old, seen=now)
    dead = WorkerHeartbeat.objects.create(id=uuid.uuid4(), name='w-dead', host='host-dead', pid=22, version='t',
                                          started=old, seen=old)
    specs = {
        'written': {'created': now},
        'lost': {'created': old},
        'owed': {'created': old, 'owed': old, 'recoveries': 2},
        'sent': {'created': old, 'sent': old},
        'running': {'created': old, 'sent': old, 'claimed': old, 'worker': live.id, 'worker_host': 'host-live',
                    'worker_pid': 111},
        'stuck': {'created': old, 'sent': old, 'claimed': old, 'worker': dead.id, 'heartbeat': old,
                  'worker_host': 'host-dead', 'worker_pid': 222},
        'gone': {'created': old, 'sent': old, 'claimed': old, 'worker': uuid.uuid4(), 'worker_host': 'host-gone'},
        'long': {'created': old, 'sent': old, 'claimed': old, 'worker': dead.id, 'heartbeat': now,
                 'worker_host': 'host-dead'},
        'immediate': {'created': old, 'claimed': old},
        'scheduled': {'created': old, 'sent': old},
        'due': {'created': old, 'sent': old},
    }
    scheduled = {'scheduled': now + timedelta(hours=1), 'due': now - timedelta(seconds=1)}
    rows = {}
    for name, fields in specs.items():
        job = Job.objects.create(name=f'job {name}', job_id=uuid.uuid4(),
                                 **({'status': 'scheduled', 'scheduled': scheduled[name]} if name in scheduled else {}))
        rows[name] = JobDispatch.objects.create(
            job=job, job_uuid=job.job_id, queue_name='default', runner='tests.jobs.CountingJob', method='enqueue',
            payload=SECRET, **fields,
        )
    return {'rows': rows, 'live': live, 'dead': dead}


EXPECTED = {
    'written': S.STATE_WRITTEN, 'lost': S.STATE_OWED, 'owed': S.STATE_OWED, 'sent': S.STATE_SENT,
    'running': S.STATE_CLAIMED, 'stuck': S.STATE_STUCK, 'gone': S.STATE_STUCK, 'long': S.STATE_CLAIMED,
    'immediate': S.STATE_CLAIMED, 'scheduled': S.STATE_SCHEDULED, 'due': S.STATE_SENT,
}


class StateTest(TestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_dispatches()
        cls.rows = cls.data['rows']

    def test_each_state(self):
        states = dict(dispatch_queryset().values_list('pk', 'dispatch_state'))
        for name, row in self.rows.items():
            with self.subTest(name):
                self.assertEqual(states[row.pk], EXPECTED[name])

    def test_stuck_candidates_are_what_liveness_would_close(self):
        stuck = set(dispatch_queryset().filter(dispatch_state=S.STATE_STUCK).values_list('pk', flat=True))
        self.assertEqual(stuck, set(liveness.stale_leases()))
        self.assertEqual(stuck, {self.rows['stuck'].pk, self.rows['gone'].pk})

    def test_counts_agree_with_the_annotation(self):
        counts = state_counts(dispatch_queryset())
        for state in counts:
            self.assertEqual(counts[state], sum(1 for value in EXPECTED.values() if value == state), state)

    @override_settings(PLUGINS_CONFIG={'netbox_safejobs': {'stuck_after': 600, 'unknown_push_age': 600}})
    def test_thresholds_are_the_settings(self):
        states = dict(dispatch_queryset().values_list('pk', 'dispatch_state'))
        self.assertEqual(states[self.rows['stuck'].pk], S.STATE_CLAIMED)
        self.assertEqual(states[self.rows['lost'].pk], S.STATE_WRITTEN)

    def test_worker_annotations(self):
        row = dispatch_queryset().get(pk=self.rows['running'].pk)
        self.assertEqual(row.worker_name, 'w-live')
        self.assertEqual(row.last_heartbeat, self.data['live'].seen)
        self.assertEqual(row.job_name, 'job running')
        self.assertGreater(row.age, timedelta(minutes=4))


class InFlightPageTest(TestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_dispatches()
        cls.rows = cls.data['rows']

    def test_needs_view_permission(self):
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(reverse(LIST_URL)), 403)
            self.assertHttpStatus(self.client.get(reverse(
                'plugins:netbox_safejobs:jobdispatch', kwargs={'pk': self.rows['owed'].pk})), 403)
        self.client.logout()
        response = self.client.get(reverse(LIST_URL))
        self.assertHttpStatus(response, 302)
        self.assertIn(reverse('login'), response['Location'])

    def test_list_shows_every_row_and_state(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        response = self.client.get(reverse(LIST_URL), {'per_page': 100})
        self.assertHttpStatus(response, 200)
        content = response.content.decode()
        for row in self.rows.values():
            self.assertIn(str(row.job_uuid), content)
        self.assertIn('Stuck candidate', content)
        self.assertIn('host-dead', content)
        self.assertNotIn(SECRET.decode(), content)
        self.assertIn('id="safejobs-inflight-legend"', content)

    def test_state_filter(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        content = self.client.get(reverse(LIST_URL), {'state': 'stuck'}).content.decode()
        self.assertIn(str(self.rows['stuck'].job_uuid), content)
        self.assertIn(str(self.rows['gone'].job_uuid), content)
        self.assertNotIn(str(self.rows['running'].job_uuid), content)
        content = self.client.get(reverse(LIST_URL), {'state': ['owed', 'written']}).content.decode()
        for name in ('owed', 'lost', 'written'):
            self.assertIn(str(self.rows[name].job_uuid), content)
        self.assertNotIn(str(self.rows['sent'].job_uuid), content)

    def test_a_job_waiting_for_its_schedule_is_scheduled_with_its_due_time(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        scheduled, due = self.rows['scheduled'], self.rows['due']
        content = self.client.get(reverse(LIST_URL), {'state': 'scheduled'}).content.decode()
        self.assertIn(str(scheduled.job_uuid), content)
        self.assertNotIn(str(due.job_uuid), content)
        # Its age column says when it is due (in about an hour), not how long ago it was enqueued.
        self.assertRegex(content, r'>due in (59m \d\ds|1h 00m)<')
        self.assertIn('>Scheduled</span>', content)
        content = self.client.get(reverse(LIST_URL), {'state': 'sent'}).content.decode()
        for name in ('sent', 'due'):
            self.assertIn(str(self.rows[name].job_uuid), content)
        self.assertNotIn(str(scheduled.job_uuid), content)
        content = self.client.get(reverse('plugins:netbox_safejobs:jobdispatch', kwargs={'pk': scheduled.pk}))
        content = content.content.decode()
        self.assertIn('id="safejobs-due"', content)
        self.assertRegex(content, r'id="safejobs-state-meaning">The job waits for its scheduled time')

    def test_every_state_is_explained_where_it_is_shown(self):
        from netbox_safejobs.choices import STATE_HELP
        from netbox_safejobs.markup import help_html

        self.add_permissions('netbox_safejobs.view_jobdispatch')
        content = self.client.get(reverse(LIST_URL), {'per_page': 100}).content.decode()
        self.assertEqual(set(STATE_HELP), set(dict(S)))
        for state in dict(S):
            with self.subTest(state):
                self.assertIn(f'<tr data-state="{state}">', content)  # the legend
                meaning = help_html(STATE_HELP[state][0].format(stuck_after=60, unknown_push_age=60))
                self.assertIn(str(meaning), content)
        # Each badge of the table has its state's meaning as its tooltip.
        self.assertRegex(content, r'<span class="badge text-bg-red" title="The job is running, but neither[^"]+" '
                                  r'data-bs-toggle="tooltip">Stuck candidate</span>')
        for name in ('stuck', 'owed', 'running', 'sent', 'written'):
            row = self.rows[name]
            content = self.client.get(reverse('plugins:netbox_safejobs:jobdispatch', kwargs={'pk': row.pk}))
            content = content.content.decode()
            with self.subTest(name):
                self.assertIn('id="safejobs-state-meaning"', content)
                self.assertIn('id="safejobs-state-action"', content)

    def test_the_pages_say_jobs_in_flight(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        content = self.client.get(reverse(LIST_URL)).content.decode()
        self.assertIn('<title>Jobs in Flight | NetBox</title>', content)
        self.assertIn('>Jobs in Flight</a>', content)  # the menu entry
        row = self.rows['owed']
        detail = self.client.get(reverse('plugins:netbox_safejobs:jobdispatch', kwargs={'pk': row.pk}))
        detail = detail.content.decode()
        self.assertIn('>Jobs in Flight</a></li>', detail)
        for page in (content, detail):
            self.assertNotIn('dispatches', page.lower())
            self.assertNotIn('Job Dispatch', page)

    def test_a_part_of_a_job_uuid(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        row = self.rows['owed']
        start = str(row.job_uuid)[:8]
        # The quick search finds the row by the start of its UUID, as the table shows it.
        for value in (start, start.upper(), str(row.job_uuid)[:13], str(row.job_uuid).replace('-', '')[:12]):
            with self.subTest(value):
                content = self.client.get(reverse(LIST_URL), {'q': value}).content.decode()
                self.assertIn(str(row.job_uuid), content)
                self.assertNotIn(str(self.rows['sent'].job_uuid), content)
        # The job UUID filter takes a whole UUID: a part is refused, saying where to search, and lists nothing.
        content = self.client.get(reverse(LIST_URL), {'job_uuid': start}).content.decode()
        self.assertIn('id="safejobs-filter-errors"', content)
        self.assertIn('is not a whole job UUID', content)
        self.assertIn('use the quick search', content)
        for other in self.rows.values():
            self.assertNotIn(str(other.job_uuid), content)

    def test_sorting_by_every_orderable_column(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        for column in ('id', 'job', 'job_uuid', 'runner', 'queue_name', 'state', 'age', 'created', 'heartbeat',
                       'worker_host', 'worker_pid', 'recoveries', '-state', '-age'):
            with self.subTest(column):
                self.assertHttpStatus(self.client.get(reverse(LIST_URL), {'sort': column}), 200)

    def test_job_linked_only_for_who_may_view_it(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        job_url = reverse('core:job', kwargs={'pk': self.rows['owed'].job_id})
        self.assertNotIn(f'href="{job_url}"', self.client.get(reverse(LIST_URL)).content.decode())
        self.add_permissions('core.view_job')
        self.assertIn(f'href="{job_url}"', self.client.get(reverse(LIST_URL)).content.decode())

    def test_csv_export_without_payload_and_no_export_templates(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        for export in ('table', ''):
            response = self.client.get(reverse(LIST_URL), {'export': export})
            self.assertHttpStatus(response, 200)
            content = b''.join(response.streaming_content) if response.streaming else response.content
            self.assertIn(str(self.rows['owed'].job_uuid).encode(), content)
            self.assertNotIn(SECRET, content)
        self.assertHttpStatus(self.client.get(reverse(LIST_URL), {'export': 'some template'}), 404)

    def test_detail_page(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch', 'netbox_safejobs.view_retryevent')
        row = self.rows['stuck']
        RetryEvent.objects.create(job_uuid=row.job_uuid, kind='retry')
        response = self.client.get(reverse('plugins:netbox_safejobs:jobdispatch', kwargs={'pk': row.pk}))
        self.assertHttpStatus(response, 200)
        content = response.content.decode()
        self.assertIn('Stuck candidate', content)
        self.assertIn('id="safejobs-stuck-note"', content)
        self.assertIn('w-dead', content)
        self.assertIn(f'?job_uuid={row.job_uuid}', content)
        self.assertNotIn('id="safejobs-job-link"', content)
        self.assertNotIn(SECRET.decode(), content)
        self.add_permissions('core.view_job')
        content = self.client.get(reverse('plugins:netbox_safejobs:jobdispatch', kwargs={'pk': row.pk})).content
        self.assertIn(b'id="safejobs-job-link"', content)

    def test_constrained_permission(self):
        permission = ObjectPermission.objects.create(name='only low', actions=['view'],
                                                     constraints={'worker_host': 'host-live'})
        permission.object_types.add(*self._object_types())
        permission.users.add(self.user)
        content = self.client.get(reverse(LIST_URL)).content.decode()
        self.assertIn(str(self.rows['running'].job_uuid), content)
        self.assertNotIn(str(self.rows['owed'].job_uuid), content)

    def _object_types(self):
        from core.models import ObjectType

        return [ObjectType.objects.get_for_model(JobDispatch)]

    def test_navigation_entry_only_with_view_permission(self):
        list_url = reverse(LIST_URL)
        self.assertNotIn(f'href="{list_url}"', self.client.get(reverse('home')).content.decode())
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        self.assertIn(f'href="{list_url}"', self.client.get(reverse('home')).content.decode())


class WidgetInFlightTest(TestCase):

    @classmethod
    def setUpTestData(cls):
        make_dispatches()

    def render(self):
        request = self.client.get(reverse('home')).wsgi_request
        request.user = self.user
        return RetryEventsWidget().render(request)

    def test_owed_and_stuck_counts_with_permission(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        html = self.render()
        self.assertIn(f'href="{reverse(LIST_URL)}"', html)
        # Each count with what the state means as its tooltip.
        self.assertRegex(html, r'data-state="owed" title="The job&#x27;s task has not reached Redis[^"]*">\s*'
                               r'<span[^>]*>Owed: <strong>2</strong>')
        self.assertRegex(html, r'data-state="stuck" title="[^"]+">\s*<span[^>]*>Stuck candidate: <strong>2</strong>')

    def test_nothing_of_it_without_permission(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        RetryEvent.objects.create(job_uuid=uuid.uuid4(), kind='retry')
        html = self.render()
        self.assertNotIn(reverse(LIST_URL), html)
        self.assertIn('data-kind="retry"', html)


class JobDispatchAPITest(APIViewTestCases.GetObjectViewTestCase, APIViewTestCases.ListObjectsViewTestCase):
    model = JobDispatch
    view_namespace = 'plugins-api:netbox_safejobs'
    brief_fields = ['display', 'id', 'job_uuid', 'state', 'url']

    @classmethod
    def setUpTestData(cls):
        make_dispatches()


class JobDispatchAPIBehaviourTest(APITestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_dispatches()
        cls.rows = cls.data['rows']

    def test_representation_has_no_payload(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        row = self.rows['stuck']
        response = self.client.get(reverse('plugins-api:netbox_safejobs-api:jobdispatch-detail',
                                           kwargs={'pk': row.pk}), **self.header)
        self.assertHttpStatus(response, 200)
        data = response.json()
        self.assertEqual(data['state'], {'value': 'stuck', 'label': 'Stuck candidate'})
        self.assertEqual(data['job_uuid'], str(row.job_uuid))
        self.assertEqual(data['worker_name'], 'w-dead')
        self.assertIsNone(data['job'])  # no core.view_job
        self.assertGreater(data['age'], 240)
        self.assertNotIn('payload', data)
        self.assertNotIn('token', data)
        self.assertNotIn(SECRET, response.content)

    def test_filters(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        url = reverse(API_LIST)
        response = self.client.get(f'{url}?state=stuck&state=owed', **self.header)
        self.assertEqual(response.json()['count'], 4)
        response = self.client.get(f'{url}?recovered=true', **self.header)
        self.assertEqual([r['job_uuid'] for r in response.json()['results']], [str(self.rows['owed'].job_uuid)])
        response = self.client.get(f'{url}?worker={self.data["dead"].id}', **self.header)
        self.assertEqual(response.json()['count'], 2)
        response = self.client.get(f'{url}?q={self.rows["sent"].job_uuid}', **self.header)
        self.assertEqual(response.json()['count'], 1)
        response = self.client.get(f'{url}?q={str(self.rows["sent"].job_uuid)[:8]}', **self.header)
        self.assertEqual([r['job_uuid'] for r in response.json()['results']], [str(self.rows['sent'].job_uuid)])
        response = self.client.get(f'{url}?state=scheduled', **self.header)
        (scheduled,) = response.json()['results']
        self.assertEqual(scheduled['state'], {'value': 'scheduled', 'label': 'Scheduled'})
        self.assertEqual(scheduled['job_uuid'], str(self.rows['scheduled'].job_uuid))
        self.assertIsNotNone(scheduled['scheduled'])
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(f'{url}?state=nonsense', **self.header), 400)
            response = self.client.get(f'{url}?job_uuid=abc', **self.header)
            self.assertHttpStatus(response, 400)
            self.assertIn('is not a whole job UUID', response.json()['job_uuid'][0])

    def test_nested_job_for_job_viewers(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch', 'core.view_job')
        row = self.rows['owed']
        data = self.client.get(reverse('plugins-api:netbox_safejobs-api:jobdispatch-detail', kwargs={'pk': row.pk}),
                               **self.header).json()
        self.assertEqual(data['job']['id'], row.job_id)

    def test_read_only(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch', 'netbox_safejobs.add_jobdispatch',
                             'netbox_safejobs.delete_jobdispatch')
        url = reverse(API_LIST)
        detail = reverse('plugins-api:netbox_safejobs-api:jobdispatch-detail', kwargs={'pk': self.rows['sent'].pk})
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.post(url, {}, format='json', **self.header), 405)
            self.assertHttpStatus(self.client.delete(detail, **self.header), 405)
        self.assertTrue(JobDispatch.objects.filter(pk=self.rows['sent'].pk).exists())

    def test_without_permission(self):
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(reverse(API_LIST), **self.header), 403)


class KindHelpTest(TestCase):
    """What each kind means and what to do: one text, in the code and in docs/troubleshooting.md."""

    def test_every_kind_has_help(self):
        from netbox_safejobs.choices import KIND_HELP, RetryEventKindChoices

        self.assertEqual(set(KIND_HELP), {value for value, _label, _color in RetryEventKindChoices.CHOICES})

    def test_docs_table_mirrors_the_code(self):
        from pathlib import Path

        from netbox_safejobs.choices import KIND_HELP, RetryEventKindChoices

        labels = {str(label).lower(): value for value, label, _color in RetryEventKindChoices.CHOICES}
        labels['stuck job errored'] = 'stuck_errored'
        docs = Path(__file__).resolve().parent.parent / 'docs' / 'troubleshooting.md'
        rows = {}
        for line in docs.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
            if len(cells) == 4 and cells[0].startswith('`') and cells[0] != '`kind`':
                rows[labels[cells[0].strip('`')]] = tuple(cells[1:])
        self.assertEqual(rows, {kind: tuple(texts) for kind, texts in KIND_HELP.items()})

    def test_list_tooltip_and_detail_page(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        event = RetryEvent.objects.create(job_uuid=uuid.uuid4(), kind='gave_up', detail='x')
        content = self.client.get(reverse('plugins:netbox_safejobs:retryevent_list')).content.decode()
        self.assertIn('The job was not created again.', content)  # plain text in the tooltip
        content = self.client.get(reverse('plugins:netbox_safejobs:retryevent', kwargs={'pk': event.pk})).content
        content = content.decode()
        self.assertIn('id="safejobs-kind-meaning"', content)
        self.assertIn('The job was <strong>not</strong> created again.', content)
        self.assertIn('<code>lookup_max_wait</code>: raise that setting.', content)

    def test_help_speaks_of_the_job_not_of_the_plugins_machinery(self):
        from netbox_safejobs.choices import KIND_HELP, STATE_HELP

        # operator_stopped's text is another change's.
        texts = [text for kind, texts in KIND_HELP.items() if kind != 'operator_stopped' for text in texts]
        texts += [text for texts in STATE_HELP.values() for text in texts]
        for text in texts:
            for word in ('owed push', 'stored push', 'marker key', 'relay', 'unstamped', 'job row', 'lease',
                         'claim', 'heartbeat', 'liveness', 'guard'):
                self.assertNotIn(word, text.lower())


class JobsTableColumnTest(TestCase):
    """The "Retry events" column of NetBox's own Jobs table."""

    def test_registered_where_netbox_has_the_registration(self):
        from core.tables import JobTable
        from netbox.registry import registry

        self.assertIn('safejobs_retry_events', registry['tables'][JobTable])

    def test_counts_linked_to_the_events_for_who_may_view_them(self):
        from users.models import UserConfig

        job = Job.objects.create(name='with events', job_id=uuid.uuid4())
        quiet = Job.objects.create(name='without events', job_id=uuid.uuid4())
        for _ in range(3):
            RetryEvent.objects.create(job=job, job_uuid=job.job_id, kind='retry')
        config, _ = UserConfig.objects.get_or_create(user=self.user)
        config.set('tables.JobTable.columns', ['name', 'status', 'safejobs_retry_events'], commit=True)
        self.add_permissions('core.view_job')
        events_url = f'{reverse("plugins:netbox_safejobs:retryevent_list")}?job_uuid={job.job_id}'
        response = self.client.get(reverse('core:job_list'))
        self.assertHttpStatus(response, 200)
        self.assertIn('Retry events', response.content.decode())
        self.assertNotIn(events_url, response.content.decode())  # no permission to view events
        self.add_permissions('netbox_safejobs.view_retryevent')
        content = self.client.get(reverse('core:job_list')).content.decode()
        self.assertIn(f'<a href="{events_url}">3</a>', content)
        self.assertIn(quiet.name, content)

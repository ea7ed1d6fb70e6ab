"""
The retry event pages (NetBox's generic view test cases pointed at the plugin's namespace), permissions, the panel
on NetBox's Job page, the dashboard widget, the navigation entry and the YAML export.
"""

import re
import uuid
from unittest import mock

import yaml
from django.test import RequestFactory, override_settings
from django.urls import reverse
from users.models import ObjectPermission
from utilities.testing import TestCase, ViewTestCases
from utilities.testing.utils import disable_warnings

from netbox_safejobs import bounded_count, events, tables
from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent
from netbox_safejobs.widgets import RetryEventsWidget

from .ui_helpers import event_url, make_events

LIST_URL = 'plugins:netbox_safejobs:retryevent_list'


class RetryEventViewTestCase(
    ViewTestCases.GetObjectViewTestCase,
    ViewTestCases.DeleteObjectViewTestCase,
    ViewTestCases.ListObjectsViewTestCase,
    ViewTestCases.BulkDeleteObjectsViewTestCase,
):
    """The parts of NetBox's ``PrimaryObjectViewTestCase`` that fit a read-only + delete model."""
    model = RetryEvent

    def _get_base_url(self):
        return 'plugins:netbox_safejobs:retryevent_{}'

    @classmethod
    def setUpTestData(cls):
        make_events()


class RetryEventPageTest(TestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()
        cls.events = cls.data['events']

    def test_anonymous_gets_login_page(self):
        self.client.logout()
        for url in (reverse(LIST_URL), event_url(self.events[0]),
                    reverse('plugins:netbox_safejobs:retryevent_delete', kwargs={'pk': self.events[0].pk})):
            response = self.client.get(url)
            self.assertHttpStatus(response, 302)
            self.assertIn(reverse('login'), response['Location'])

    @override_settings(EXEMPT_VIEW_PERMISSIONS=['netbox_safejobs.retryevent'])
    def test_exempt_view_permissions(self):
        self.assertHttpStatus(self.client.get(reverse(LIST_URL)), 200)
        self.assertHttpStatus(self.client.get(event_url(self.events[0])), 200)
        # Exempt from view permission only: deleting still needs the permission.
        with disable_warnings('django.request'):
            url = reverse('plugins:netbox_safejobs:retryevent_delete', kwargs={'pk': self.events[0].pk})
            self.assertHttpStatus(self.client.post(url, {'confirm': True}), 403)
        self.assertTrue(RetryEvent.objects.filter(pk=self.events[0].pk).exists())

    def test_view_only_user_sees_no_delete_controls(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        event = self.events[0]
        content = self.client.get(event_url(event)).content.decode()
        self.assertNotIn(reverse('plugins:netbox_safejobs:retryevent_delete', kwargs={'pk': event.pk}), content)
        content = self.client.get(reverse(LIST_URL)).content.decode()
        self.assertNotIn(reverse('plugins:netbox_safejobs:retryevent_bulk_delete'), content)

    def test_view_and_delete_user_sees_delete_controls(self):
        self.add_permissions('netbox_safejobs.view_retryevent', 'netbox_safejobs.delete_retryevent')
        event = self.events[0]
        content = self.client.get(event_url(event)).content.decode()
        self.assertIn(reverse('plugins:netbox_safejobs:retryevent_delete', kwargs={'pk': event.pk}), content)
        content = self.client.get(reverse(LIST_URL)).content.decode()
        self.assertIn(reverse('plugins:netbox_safejobs:retryevent_bulk_delete'), content)

    def test_list_shows_columns_and_filters_by_kind(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        response = self.client.get(reverse(LIST_URL), {'kind': RetryEventKindChoices.KIND_GAVE_UP})
        self.assertHttpStatus(response, 200)
        content = response.content.decode()
        gave_up = self.events[5]
        self.assertIn(event_url(gave_up), content)
        self.assertIn('lost job', content)
        self.assertIn('text-bg-red', content)  # the kind's colour badge
        for other in self.events[:5]:
            self.assertNotIn(f'href="{event_url(other)}"', content)

    def test_list_links_existing_job_and_marks_missing_row(self):
        self.add_permissions('netbox_safejobs.view_retryevent', 'core.view_job')
        content = self.client.get(reverse(LIST_URL)).content.decode()
        self.assertIn(reverse('core:job', kwargs={'pk': self.data['job_a'].pk}), content)
        self.assertIn('no job row', content)

    def test_list_refuses_bad_filter_values_and_lists_nothing(self):
        # NetBox's lists leave out a filter whose value does not parse, and list every row: here the page says which
        # value it refused, lists nothing, and offers the list without that filter.
        self.add_permissions('netbox_safejobs.view_retryevent')
        for params in ({'job_uuid': 'not-a-uuid'}, {'kind': 'nonsense'}, {'time__after': 'yesterday-ish'},
                       {'job_id': 'x'}, {'attempt': 'many'}, {'worker_pid': '-'}):
            with self.subTest(params=params):
                response = self.client.get(reverse(LIST_URL), {**params, 'queue': 'low'})
                self.assertHttpStatus(response, 200)
                content = response.content.decode()
                self.assertIn('id="safejobs-filter-errors"', content)
                for event in self.events:
                    self.assertNotIn(f'href="{event_url(event)}"', content)
                self.assertIn(f'href="{reverse(LIST_URL)}?queue=low" class="alert-link', content)

    def test_a_part_of_a_job_uuid_is_refused_by_the_filter_and_found_by_the_quick_search(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        uuid_c = str(self.data['uuid_c'])
        content = self.client.get(reverse(LIST_URL), {'job_uuid': uuid_c[:8]}).content.decode()
        self.assertIn(f'&quot;{uuid_c[:8]}&quot; is not a whole job UUID', content)
        self.assertIn('To find a job by the start of its UUID, use the quick search.', content)
        self.assertNotIn(f'href="{event_url(self.events[4])}"', content)
        content = self.client.get(reverse(LIST_URL), {'q': uuid_c[:8]}).content.decode()
        self.assertIn(f'href="{event_url(self.events[4])}"', content)
        self.assertIn(f'href="{event_url(self.events[5])}"', content)
        self.assertNotIn(f'href="{event_url(self.events[0])}"', content)
        # The bulk delete of "all matching" a refused filter deletes nothing.
        self.add_permissions('netbox_safejobs.delete_retryevent')
        url = reverse('plugins:netbox_safejobs:retryevent_bulk_delete')
        response = self.client.post(f'{url}?job_uuid={uuid_c[:8]}', {
            '_all': 'true', '_confirm': 'true', 'confirm': 'true', 'pk': [event.pk for event in self.events],
        })
        self.assertHttpStatus(response, 302)
        self.assertEqual(RetryEvent.objects.count(), len(self.events))

    def test_list_rows_are_one_line_by_default(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        content = self.client.get(reverse(LIST_URL)).content.decode()
        header = content[content.index('<thead'):content.index('</thead>')]
        for shown in ('Time', 'Kind', 'Job', 'Job UUID', 'Queue', 'Attempt', 'Delay', 'Worker'):
            self.assertIn(shown, header)
        # The runner and the detail text are on the event's page, and a column away.
        for hidden in ('Runner', 'Detail'):
            self.assertNotIn(hidden, header)
        self.assertNotIn('core.jobs.SyncDataSourceJob', content)
        # The job's UUID short, the whole one as its tooltip, linked to that job's events.
        job_uuid = str(self.data['job_b'].job_id)
        self.assertIn(f'<a href="{reverse(LIST_URL)}?job_uuid={job_uuid}" title="{job_uuid}">{job_uuid[:8]}</a>',
                      content)

    def test_detail_column_is_one_line_and_exports_are_whole(self):
        from users.models import UserConfig

        self.add_permissions('netbox_safejobs.view_retryevent')
        long_detail = 'ConnectionError: ' + 'the server closed the connection unexpectedly; ' * 5
        event = RetryEvent.objects.create(job_uuid=uuid.uuid4(), job_name='long', kind='dispatch_failed',
                                          runner='extras.jobs.ScriptJob', detail=long_detail)
        config, _ = UserConfig.objects.get_or_create(user=self.user)
        config.set('tables.RetryEventTable.columns', ['time', 'kind', 'job', 'job_uuid', 'runner', 'detail'],
                   commit=True)
        content = self.client.get(reverse(LIST_URL), {'kind': 'dispatch_failed'}).content.decode()
        self.assertIn('extras.jobs.ScriptJob', content)
        self.assertRegex(content, r'<span class="d-inline-block text-truncate align-bottom" style="max-width: \d+rem" '
                                  rf'title="{re.escape(long_detail)}">ConnectionError: [^<]+…</span>')
        # Exports have the whole UUID and texts: the current view (its columns), and all data (every column).
        config.set('tables.RetryEventTable.columns', ['time', 'kind', 'job', 'job_uuid'], commit=True)
        for export in ('table', ''):
            with self.subTest(export=export):
                response = self.client.get(reverse(LIST_URL), {'kind': 'dispatch_failed', 'export': export})
                body = (b''.join(response.streaming_content) if response.streaming else response.content).decode()
                self.assertIn(str(event.job_uuid), body)
                if export == '':
                    self.assertIn(long_detail.strip(), body)
                    self.assertIn('extras.jobs.ScriptJob', body)

    def test_list_counts_only_so_far(self):
        # Six events, counted up to the next multiple of COUNT_STEP past the page shown.
        self.add_permissions('netbox_safejobs.view_retryevent')
        with mock.patch.object(bounded_count, 'COUNT_STEP', 2):
            content = self.client.get(reverse(LIST_URL), {'per_page': 1}).content.decode()
            self.assertIn('of 2+', content)
            # The bound moves on with the page asked for: page 5 of 1 event is counted to 6, all of them.
            content = self.client.get(reverse(LIST_URL), {'per_page': 1, 'page': 5}).content.decode()
            self.assertIn('of 6', content)
            self.assertNotIn('of 6+', content)
        with mock.patch.object(bounded_count, 'COUNT_STEP', 10):
            content = self.client.get(reverse(LIST_URL)).content.decode()
            self.assertIn('Showing 1-6 of 6', content)

    def test_bounded_count_paginator(self):
        queryset = RetryEvent.objects.all()
        with mock.patch.object(bounded_count, 'COUNT_STEP', 4):
            for page, count in ((1, 4), (2, 4), (4, 6), (9, 6)):
                paginator = bounded_count.BoundedCountPaginator(queryset, 1, orphans=0, queryset=queryset,
                                                                page_number=page)
                with self.subTest(page=page):
                    self.assertEqual(paginator.count, count)
                    self.assertEqual(isinstance(paginator.count, bounded_count.CountAtLeast), count == 4)
            self.assertEqual(str(bounded_count.CountAtLeast(4)), '4+')
            paginator = bounded_count.BoundedCountPaginator(queryset, 1, queryset=queryset, page_number='x')
            self.assertEqual(paginator.page_number, 1)

    def test_bounded_count_reads_ids_in_the_page_order_where_an_index_leads(self):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from netbox_safejobs.api.views import RetryEventPagination
        from netbox_safejobs.in_flight import dispatch_queryset

        self.assertTrue(tables.RetryEventTable.count_in_page_order)
        self.assertTrue(RetryEventPagination.count_in_page_order)
        self.assertFalse(tables.JobDispatchTable.count_in_page_order)
        cases = (
            # (queryset, counted in its order when asked to)
            (RetryEvent.objects.all(), True),  # the default order, the time index
            (RetryEvent.objects.order_by('-delay', '-time'), True),  # the delay index
            (RetryEvent.objects.order_by('-detail'), False),  # no index on the detail
            (RetryEvent.objects.order_by('job__name'), False),  # through a join
            (RetryEvent.objects.order_by(), False),
            (dispatch_queryset(), True),  # oldest first, the created index
            (dispatch_queryset().order_by('dispatch_state'), False),  # computed per row
        )
        for queryset, ordered in cases:
            for in_page_order in (True, False):
                with (self.subTest(sql=str(queryset.query)[-80:], in_page_order=in_page_order),
                      CaptureQueriesContext(connection) as queries):
                    self.assertEqual(bounded_count.bounded_count(queryset, 1, in_page_order), queryset.count())
                    sql = queries.captured_queries[0]['sql']
                    self.assertEqual('ORDER BY' in sql, ordered and in_page_order)
                    # Only the IDs: neither the event's columns nor the in-flight state and subqueries.
                    inner = sql[sql.index('(SELECT') + 1:sql.index(' FROM ')]
                    self.assertNotIn(',', inner)

    def test_list_sorted_by_a_column_then_newest_first(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        content = self.client.get(reverse(LIST_URL), {'sort': 'delay'}).content.decode()
        # delay 0.25, then the two 0.5 s events newest first, then 1.0, 12.0; the one without a delay last.
        order = [self.events[i] for i in (4, 1, 0, 2, 5, 3)]
        positions = [content.index(f'href="{event_url(event)}"') for event in order]
        self.assertEqual(positions, sorted(positions))
        self.client.get(reverse(LIST_URL), {'sort': ''})

    def test_detail_page(self):
        self.add_permissions('netbox_safejobs.view_retryevent', 'core.view_job')
        event = self.events[1]
        response = self.client.get(event_url(event))
        self.assertHttpStatus(response, 200)
        content = response.content.decode()
        self.assertIn(reverse('core:job', kwargs={'pk': self.data['job_a'].pk}), content)
        self.assertIn(f'?job_uuid={event.job_uuid}', content)
        self.assertIn('core.jobs.SyncDataSourceJob', content)
        # The other events of the same job are listed, not those of other jobs.
        for other in self.events[:3]:
            self.assertIn(event_url(other), content)
        self.assertNotIn(event_url(self.events[3]), content)

    def test_detail_page_of_event_without_job_row(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        event = self.events[5]
        content = self.client.get(event_url(event)).content.decode()
        self.assertIn(str(event.job_uuid), content)
        self.assertIn('no job row', content)
        self.assertNotIn('safejobs-job-link', content)

    def test_constrained_view_permission_hides_related_events(self):
        permission = ObjectPermission.objects.create(
            name='gave up only', actions=['view'], constraints={'kind': RetryEventKindChoices.KIND_RETRY},
        )
        permission.users.add(self.user)
        permission.object_types.add(self._object_type())
        retry = self.events[0]
        content = self.client.get(event_url(retry)).content.decode()
        self.assertIn(event_url(self.events[1]), content)  # a retry of the same job
        self.assertNotIn(event_url(self.events[2]), content)  # found_after_retry of the same job: not permitted
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(event_url(self.events[2])), 404)

    def _object_type(self):
        from core.models import ObjectType

        return ObjectType.objects.get_for_model(RetryEvent)

    def test_credentials_are_redacted_in_event_detail(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        event = events.record(
            RetryEventKindChoices.KIND_DISPATCH_FAILED, job_uuid=uuid.uuid4(), job_name='push',
            detail='ConnectionError: redis://:s3cr3t-pw@redis.example:6379/0 refused; '
                   'postgres://netbox:db-pass-42@db:5432/netbox password=hunter2',
        )
        self.assertIsNotNone(event)
        from users.models import UserConfig

        config, _ = UserConfig.objects.get_or_create(user=self.user)
        config.set('tables.RetryEventTable.columns', ['time', 'kind', 'job', 'detail'], commit=True)
        for url in (event_url(event), reverse(LIST_URL)):
            content = self.client.get(url).content.decode()
            self.assertIn('redis.example', content)
            for secret in ('s3cr3t-pw', 'db-pass-42', 'hunter2'):
                self.assertNotIn(secret, content)

    def test_yaml_export_follows_filters_and_permissions(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        response = self.client.get(reverse(LIST_URL), {'export': 'yaml', 'kind': 'retry'})
        self.assertHttpStatus(response, 200)
        self.assertEqual(response['Content-Type'], 'text/yaml')
        documents = [d for d in yaml.safe_load_all(b''.join(response.streaming_content)) if d]
        self.assertEqual(sorted(d['id'] for d in documents),
                         sorted(e.pk for e in self.events if e.kind == 'retry'))
        self.assertEqual({d['kind'] for d in documents}, {'retry'})
        first = next(d for d in documents if d['id'] == self.events[0].pk)
        self.assertEqual(first['job'], self.data['job_a'].pk)
        self.assertEqual(first['job_uuid'], str(self.data['job_a'].job_id))
        self.assertEqual(first['delay'], 0.5)

    def test_yaml_export_needs_view_permission(self):
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(reverse(LIST_URL), {'export': 'yaml'}), 403)

    def test_navigation_entry_only_with_view_permission(self):
        list_url = reverse(LIST_URL)
        self.assertNotIn(f'href="{list_url}"', self.client.get(reverse('home')).content.decode())
        self.add_permissions('netbox_safejobs.view_retryevent')
        self.assertIn(f'href="{list_url}"', self.client.get(reverse('home')).content.decode())


class JobPagePanelTest(TestCase):
    """The events of a job on NetBox's own Job page."""

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()

    def job_page(self, job):
        response = self.client.get(reverse('core:job', kwargs={'pk': job.pk}))
        self.assertHttpStatus(response, 200)
        return response.content.decode()

    def test_panel_lists_the_jobs_events(self):
        self.add_permissions('core.view_job', 'netbox_safejobs.view_retryevent')
        content = self.job_page(self.data['job_a'])
        self.assertIn('safejobs-job-panel', content)
        for event in self.data['events'][:3]:
            self.assertIn(event_url(event), content)
        self.assertNotIn(event_url(self.data['events'][3]), content)
        self.assertIn(f'?job_uuid={self.data["job_a"].job_id}', content)

    def test_no_panel_without_permission(self):
        self.add_permissions('core.view_job')
        content = self.job_page(self.data['job_a'])
        self.assertNotIn('safejobs-job-panel', content)

    def test_no_panel_for_a_job_without_events(self):
        from core.models import Job

        self.add_permissions('core.view_job', 'netbox_safejobs.view_retryevent')
        job = Job.objects.create(name='quiet', job_id=uuid.uuid4())
        self.assertNotIn('safejobs-job-panel', self.job_page(job))

    def test_panel_shows_newest_ten_and_the_total(self):
        from core.models import Job

        self.add_permissions('core.view_job', 'netbox_safejobs.view_retryevent')
        job = Job.objects.create(name='flaky', job_id=uuid.uuid4())
        for attempt in range(1, 16):
            RetryEvent.objects.create(job=job, job_uuid=job.job_id, kind='retry', attempt=attempt)
        content = self.job_page(job)
        # The count is a badge set apart from the heading ("Retry events 15", not "Retry events15").
        self.assertRegex(content, r'Retry events <span class="badge text-bg-secondary ms-2">15</span>')
        newest = RetryEvent.objects.filter(job=job)[:10]
        linked = set(re.findall(r'href="/plugins/safejobs/retry-events/(\d+)/"', content))
        self.assertEqual(linked, {str(e.pk) for e in newest})


class DashboardWidgetTest(TestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()

    def render(self):
        request = RequestFactory().get('/')
        request.user = self.user
        return RetryEventsWidget().render(request)

    def test_counts_last_24_hours_by_kind_with_links(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        html = self.render()
        # Within 24 hours: 2 retries, 1 found_after_retry, 1 dispatch_failed; the gave_up is 3 days old. Only the
        # kinds with events are listed.
        self.assertRegex(html, r'data-kind="retry"[\s\S]*?<strong>2</strong>')
        self.assertRegex(html, r'data-kind="dispatch_failed"[\s\S]*?<strong>1</strong>')
        self.assertEqual(re.findall(r'data-kind="(\w+)"', html), ['retry', 'found_after_retry', 'dispatch_failed'])
        self.assertIn('kind=retry&amp;time__after=', html)
        self.assertRegex(html, r'All events, last 24 hours[\s\S]*?<strong>4</strong>')
        self.assertNotIn('grid-template-columns', html)

    def test_no_events_and_many_kinds(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        RetryEvent.objects.all().delete()
        self.assertIn('No retry events in the last 24 hours.', self.render())
        for kind in RetryEventKindChoices.values():
            RetryEvent.objects.create(job_uuid=uuid.uuid4(), kind=kind)
        html = self.render()
        self.assertEqual(len(re.findall(r'data-kind="', html)), len(RetryEventKindChoices.values()))
        self.assertIn('grid-template-columns: repeat(2', html)  # two columns: the default height holds them

    def test_title_follows_the_hours_unless_the_user_wrote_one(self):
        cases = (
            # (stored title, hours, title shown)
            (None, 24, 'Retry events (24 hours)'),
            ('', 72, 'Retry events (72 hours)'),
            ('Retry events (24 hours)', 72, 'Retry events (72 hours)'),
            ('Retry events (72 hours)', 1, 'Retry events (1 hour)'),
            ('Retry events (1 hour)', 6, 'Retry events (6 hours)'),
            ('Safe jobs, last 3 days', 72, 'Safe jobs, last 3 days'),
            ('Retry events (lots of hours)', 72, 'Retry events (lots of hours)'),
        )
        for stored, hours, shown in cases:
            with self.subTest(stored=stored, hours=hours):
                self.assertEqual(RetryEventsWidget(title=stored, config={'hours': hours}).title, shown)
        self.assertEqual(RetryEventsWidget().title, 'Retry events (24 hours)')

    def test_without_permission(self):
        html = self.render()
        self.assertIn('No permission', html)
        self.assertNotIn('data-kind', html)

    def test_widget_is_registered(self):
        from netbox.registry import registry

        self.assertIs(registry['widgets']['netbox_safejobs.RetryEventsWidget'], RetryEventsWidget)

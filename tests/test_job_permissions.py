"""
The job of a retry event is shown by the same rule in the UI, the REST API and GraphQL: only to a user who may view
that Job (``core.view_job`` and its constraints), as NetBox's own Job pages and API decide. Everyone who may view
the event still sees the job's UUID and name.
"""

import csv
import io
import json
import logging
from contextlib import contextmanager

from core.models import ObjectType
from django.urls import reverse
from users.models import ObjectPermission
from utilities.testing import APITestCase
from utilities.testing.utils import disable_warnings

from netbox_safejobs.models import RetryEvent

from .ui_helpers import event_url, make_events

LIST = 'plugins:netbox_safejobs:retryevent_list'
API_LIST = 'plugins-api:netbox_safejobs-api:retryevent-list'
API_DETAIL = 'plugins-api:netbox_safejobs-api:retryevent-detail'
GRAPHQL_FIELDS = 'id job_uuid job_name job {id name status}'


@contextmanager
def silenced(logger_name):
    logger = logging.getLogger(logger_name)
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


class PageAssertions:
    """assertIn and assertNotIn for rendered pages, whose failure message does not hold the whole page."""

    def assert_on_page(self, needle, content, msg=None):
        self.assertTrue(needle in content, msg or f'{needle!r} is not on the page')

    def assert_not_on_page(self, needle, content, msg=None):
        self.assertFalse(needle in content, msg or f'{needle!r} is on the page')


class JobPermissionTest(PageAssertions, APITestCase):
    """One user, seen through the three interfaces: ``self.client`` is logged in and carries the API token."""

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()
        cls.events = cls.data['events']
        cls.event_a = cls.events[0]  # job A ("nightly sync")
        cls.event_b = cls.events[3]  # job B ("report run")

    def setUp(self):
        super().setUp()
        self.client.force_login(self.user)

    def job_url(self, job):
        return reverse('core:job', kwargs={'pk': job.pk})

    def grant_jobs(self, constraints=None):
        permission = ObjectPermission.objects.create(name='jobs', actions=['view'], constraints=constraints)
        permission.users.add(self.user)
        permission.object_types.add(ObjectType.objects.get_for_model(self.data['job_a']))

    # The three interfaces

    def page(self, url, params=None):
        response = self.client.get(url, params or {})
        self.assertHttpStatus(response, 200)
        return response.content.decode()

    def rest_jobs(self):
        """{event id: nested job} from the REST list, and the same from each event's detail."""
        response = self.client.get(reverse(API_LIST), **self.header)
        self.assertHttpStatus(response, 200)
        listed = {row['id']: row['job'] for row in response.json()['results']}
        for event in (self.event_a, self.event_b):
            detail = self.client.get(reverse(API_DETAIL, kwargs={'pk': event.pk}), **self.header).json()
            self.assertEqual(detail['job'], listed[event.pk])
            self.assertEqual(detail['job_uuid'], str(event.job_uuid))
            self.assertEqual(detail['job_name'], event.job_name)
        return listed

    def graphql(self, query):
        response = self.client.post(reverse('graphql'), data={'query': query}, format='json', **self.header)
        self.assertHttpStatus(response, 200)
        return json.loads(response.content)

    def graphql_jobs(self):
        data = self.graphql('{netbox_safejobs_retry_event_list {' + GRAPHQL_FIELDS + '}}')
        self.assertNotIn('errors', data)
        rows = {int(row['id']): row for row in data['data']['netbox_safejobs_retry_event_list']}
        for event in (self.event_a, self.event_b):
            self.assertEqual(rows[event.pk]['job_uuid'], str(event.job_uuid))
            self.assertEqual(rows[event.pk]['job_name'], event.job_name)
        return {pk: row['job'] for pk, row in rows.items()}

    # Viewer of events, without permission to view jobs

    def test_event_viewer_without_job_permission(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        job_a, job_b = self.data['job_a'], self.data['job_b']

        content = self.page(reverse(LIST))
        for job in (job_a, job_b):
            self.assert_not_on_page(self.job_url(job), content, 'a job link would lead to a 403')
            self.assert_on_page(job.name, content)
        for event in (self.event_a, self.event_b):
            content = self.page(event_url(event))
            self.assert_not_on_page('safejobs-job-link', content)
            self.assert_not_on_page('/core/jobs/', content)
            self.assert_on_page(str(event.job_uuid), content)
            self.assert_not_on_page('safejobs-rq-task-link', content)

        jobs = self.rest_jobs()
        self.assertIsNone(jobs[self.event_a.pk])
        self.assertIsNone(jobs[self.event_b.pk])
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(reverse('core-api:job-detail', kwargs={'pk': job_a.pk}),
                                                  **self.header), 403)
            self.assertHttpStatus(self.client.get(self.job_url(job_a)), 403)

        jobs = self.graphql_jobs()
        self.assertIsNone(jobs[self.event_a.pk])
        self.assertIsNone(jobs[self.event_b.pk])

    # A user with no permission at all

    def test_user_without_permissions(self):
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(reverse(LIST)), 403)
            self.assertHttpStatus(self.client.get(event_url(self.event_a)), 403)
            self.assertHttpStatus(self.client.get(reverse(API_LIST), **self.header), 403)
            self.assertHttpStatus(self.client.get(reverse(API_DETAIL, kwargs={'pk': self.event_a.pk}),
                                                  **self.header), 403)
        data = self.graphql('{netbox_safejobs_retry_event_list {' + GRAPHQL_FIELDS + '}}')
        self.assertEqual(data['data']['netbox_safejobs_retry_event_list'], [])
        with silenced('strawberry.execution'):  # NetBox answers "does not exist", and strawberry logs its traceback
            data = self.graphql(f'{{netbox_safejobs_retry_event(id: "{self.event_a.pk}") {{{GRAPHQL_FIELDS}}}}}')
        self.assertNotIn('nightly sync', json.dumps(data))

    # With permission to view jobs: all of them, or some

    def test_event_and_job_viewer(self):
        self.add_permissions('netbox_safejobs.view_retryevent', 'core.view_job')
        job_a = self.data['job_a']

        self.assert_on_page(self.job_url(job_a), self.page(reverse(LIST)))
        content = self.page(event_url(self.event_a))
        self.assert_on_page(f'href="{self.job_url(job_a)}" id="safejobs-job-link"', content)
        self.assertRegex(content, r'id="safejobs-job-status">\s*<span class="badge text-bg-\w+">Pending</span>')
        self.assert_not_on_page('safejobs-rq-task-link', content, 'Background Tasks are for superusers')

        jobs = self.rest_jobs()
        self.assertEqual(jobs[self.event_a.pk]['id'], job_a.pk)
        self.assertEqual(jobs[self.event_a.pk]['status']['value'], 'pending')
        self.assertEqual(self.graphql_jobs()[self.event_a.pk], {'id': str(job_a.pk), 'name': job_a.name,
                                                               'status': 'pending'})

    def test_constrained_job_permission(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        self.grant_jobs(constraints={'name': 'nightly sync'})
        job_a, job_b = self.data['job_a'], self.data['job_b']

        content = self.page(reverse(LIST))
        self.assert_on_page(self.job_url(job_a), content)
        self.assert_not_on_page(self.job_url(job_b), content)
        self.assert_on_page('safejobs-job-link', self.page(event_url(self.event_a)))
        content = self.page(event_url(self.event_b))
        self.assert_not_on_page('safejobs-job-link', content)
        self.assert_not_on_page('badge text-bg', content.split('id="safejobs-job-status"')[1].split('</td>')[0])

        jobs = self.rest_jobs()
        self.assertEqual(jobs[self.event_a.pk]['id'], job_a.pk)
        self.assertIsNone(jobs[self.event_b.pk])

        jobs = self.graphql_jobs()
        self.assertEqual(jobs[self.event_a.pk]['id'], str(job_a.pk))
        self.assertIsNone(jobs[self.event_b.pk])

    def test_superuser_sees_the_job_and_its_rq_task(self):
        # Staff too, as an administrator is: NetBox 4.2 - 4.4 show Background Tasks to staff users only.
        self.user.is_superuser = True
        self.user.is_staff = True
        self.user.save()
        content = self.page(event_url(self.event_a))
        self.assert_on_page('safejobs-job-link', content)
        task_url = reverse('core:background_task', kwargs={'job_id': str(self.event_a.job_uuid)})
        self.assert_on_page(f'href="{task_url}" id="safejobs-rq-task-link"', content)
        # An event without a job row still has its task (a give-up is about a task whose row never appeared).
        lost = self.events[5]
        self.assert_on_page(reverse('core:background_task', kwargs={'job_id': str(lost.job_uuid)}),
                            self.page(event_url(lost)))
        self.assertIsNotNone(self.rest_jobs()[self.event_b.pk])


class JobUUIDColumnTest(PageAssertions, APITestCase):
    """The job's UUID is on the list by default and in every export (the name alone does not tell runs apart)."""

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()

    def setUp(self):
        super().setUp()
        self.client.force_login(self.user)
        self.add_permissions('netbox_safejobs.view_retryevent')

    def csv_rows(self, params):
        response = self.client.get(reverse(LIST), params)
        self.assertHttpStatus(response, 200)
        body = b''.join(response.streaming_content) if response.streaming else response.content
        return list(csv.reader(io.StringIO(body.decode().lstrip('\ufeff'))))

    def test_on_by_default(self):
        # No saved column choice: on NetBox 4.2 the choice another test saved was still there (order-dependent).
        self.user.config.clear('tables.RetryEventTable', commit=True)
        content = self.client.get(reverse(LIST)).content.decode()
        self.assert_on_page(str(self.data['uuid_c']), content)

    def test_in_the_export_of_the_current_view_even_when_hidden(self):
        self.user.config.set('tables.RetryEventTable.columns', ['time', 'kind', 'job'], commit=True)
        content = self.client.get(reverse(LIST)).content.decode()
        self.assert_not_on_page(str(self.data['uuid_c']), content)
        header, *rows = self.csv_rows({'export': 'table'})
        self.assertEqual(header[:3], ['Time', 'Kind', 'Job'])
        self.assertIn('Job UUID', header)
        self.assertIn(str(self.data['uuid_c']), {row[header.index('Job UUID')] for row in rows})

    def test_in_the_export_of_all_data(self):
        header, *rows = self.csv_rows({'export': ''})
        self.assertIn('Job UUID', header)
        self.assertEqual(len(rows), RetryEvent.objects.count())


class PartialMatchFiltersTest(APITestCase):
    """``kind`` and ``job_uuid`` take whole values: no ``__ic``-style variants that could only answer 400."""

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()
        cls.events = cls.data['events']

    def setUp(self):
        super().setUp()
        self.add_permissions('netbox_safejobs.view_retryevent')

    def ids(self, params):
        response = self.client.get(reverse(API_LIST), params, **self.header)
        self.assertHttpStatus(response, 200)
        return sorted(row['id'] for row in response.json()['results'])

    def test_schema_offers_no_partial_match_on_kind_or_job_uuid(self):
        response = self.client.get(reverse('schema'), {'format': 'json'}, **self.header)
        parameters = {p['name'] for p in response.json()['paths']['/api/plugins/safejobs/retry-events/']['get']
                      ['parameters']}
        for name in ('kind', 'job_uuid'):
            self.assertEqual({p for p in parameters if p.startswith(f'{name}__')}, {f'{name}__n'})
        self.assertIn('job_name__ic', parameters)

    def test_negations_work(self):
        self.assertEqual(self.ids({'kind__n': 'retry'}), sorted(self.events[i].pk for i in (2, 3, 5)))
        self.assertEqual(self.ids({'job_uuid__n': str(self.data['uuid_c'])}),
                         sorted(self.events[i].pk for i in (0, 1, 2, 3)))

    def test_partial_matches_through_the_other_fields(self):
        self.assertEqual(self.ids({'job_name__ic': 'NIGHT'}), sorted(e.pk for e in self.events[:3]))
        self.assertEqual(self.ids({'q': 'report'}), [self.events[3].pk])

    def test_graphql_partial_match_on_kind(self):
        query = '{netbox_safejobs_retry_event_list(filters: {kind: {i_contains: "GAVE"}}) {id}}'
        response = self.client.post(reverse('graphql'), data={'query': query}, format='json', **self.header)
        data = json.loads(response.content)
        self.assertNotIn('errors', data)
        self.assertEqual([int(r['id']) for r in data['data']['netbox_safejobs_retry_event_list']],
                         [self.events[5].pk])

"""
The REST API of retry events: NetBox's API test cases for a read-only + delete model, 405 for writes, 400 for bad
filter values, brief mode, the nested job, permissions and the OpenAPI schema.
"""

import uuid
from unittest import mock

from django.test import override_settings
from django.urls import reverse
from users.models import ObjectPermission
from utilities.testing import APITestCase, APIViewTestCases
from utilities.testing.utils import disable_warnings

from netbox_safejobs import bounded_count, events
from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent

from .ui_helpers import make_events

LIST = 'plugins-api:netbox_safejobs-api:retryevent-list'
DETAIL = 'plugins-api:netbox_safejobs-api:retryevent-detail'


class RetryEventAPITest(
    APIViewTestCases.GetObjectViewTestCase,
    APIViewTestCases.ListObjectsViewTestCase,
    APIViewTestCases.DeleteObjectViewTestCase,
):
    model = RetryEvent
    view_namespace = 'plugins-api:netbox_safejobs'
    brief_fields = ['display', 'id', 'job_uuid', 'kind', 'time', 'url']

    @classmethod
    def setUpTestData(cls):
        make_events()

    # The bulk delete tests of DeleteObjectViewTestCase: the endpoint deletes one event per request.
    def test_bulk_delete_objects(self):
        self.skipTest('single-object delete only')

    def test_bulk_delete_objects_nonexistent_id(self):
        self.skipTest('single-object delete only')

    def test_bulk_delete_objects_malformed_entry(self):
        self.skipTest('single-object delete only')

    def test_bulk_delete_objects_duplicate_id(self):
        self.skipTest('single-object delete only')

    def test_bulk_delete_objects_no_body(self):
        self.skipTest('single-object delete only')


class RetryEventAPIBehaviourTest(APITestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()
        cls.events = cls.data['events']

    def get(self, url, params=None):
        return self.client.get(url, params or {}, **self.header)

    def grant(self, *actions, constraints=None):
        from core.models import ObjectType

        permission = ObjectPermission.objects.create(name='retry events', actions=list(actions),
                                                     constraints=constraints)
        permission.users.add(self.user)
        permission.object_types.add(ObjectType.objects.get_for_model(RetryEvent))

    def test_writes_answer_405_whatever_the_permissions(self):
        event = self.events[0]
        payload = {'kind': 'retry', 'job_uuid': str(uuid.uuid4())}
        for permissions in ((), ('view', 'add', 'change', 'delete')):
            if permissions:
                self.grant(*permissions)
            with self.subTest(permissions=permissions), disable_warnings('django.request'):
                self.assertHttpStatus(
                    self.client.post(reverse(LIST), payload, format='json', **self.header), 405)
                self.assertHttpStatus(
                    self.client.post(reverse(LIST), [payload], format='json', **self.header), 405)
                detail = reverse(DETAIL, kwargs={'pk': event.pk})
                self.assertHttpStatus(self.client.put(detail, payload, format='json', **self.header), 405)
                self.assertHttpStatus(self.client.patch(detail, payload, format='json', **self.header), 405)
                self.assertHttpStatus(self.client.patch(reverse(LIST), [{'id': event.pk}], format='json',
                                                        **self.header), 405)
        self.assertEqual(RetryEvent.objects.count(), len(self.events))
        event.refresh_from_db()
        self.assertEqual(event.kind, 'retry')

    def test_bad_filter_values_answer_400(self):
        self.grant('view')
        for params in ({'job_uuid': 'not-a-uuid'}, {'kind': 'nonsense'}, {'time__after': 'yesterday-ish'},
                       {'job_id': 'x'}, {'job_id': 999999}, {'attempt': 'many'}, {'delay__gte': 'slow'},
                       {'worker_pid': 'x'}, {'id': 'abc'}):
            with self.subTest(params=params), disable_warnings('django.request'):
                response = self.get(reverse(LIST), params)
                self.assertHttpStatus(response, 400)
                self.assertTrue(response.json(), 'a 400 names the failing filter')

    def test_a_part_of_a_job_uuid_answers_400_saying_where_to_search(self):
        self.grant('view')
        start = str(self.data['uuid_c'])[:8]
        with disable_warnings('django.request'):
            response = self.get(reverse(LIST), {'job_uuid': start})
        self.assertHttpStatus(response, 400)
        (message,) = response.json()['job_uuid']
        self.assertIn(f'"{start}" is not a whole job UUID', message)
        self.assertIn('quick search', message)
        response = self.get(reverse(LIST), {'q': start})
        self.assertEqual(sorted(r['id'] for r in response.json()['results']),
                         sorted(self.events[i].pk for i in (4, 5)))

    def test_root_lists_every_endpoint(self):
        self.grant('view')
        response = self.get(reverse('plugins-api:netbox_safejobs-api:api-root'))
        self.assertHttpStatus(response, 200)
        root = response.json()
        self.assertEqual(list(root), ['health', 'jobs-in-flight', 'retry-events'])
        self.assertTrue(root['health'].endswith('/api/plugins/safejobs/health/'))
        self.assertTrue(root['jobs-in-flight'].endswith('/api/plugins/safejobs/jobs-in-flight/'))

    def test_filters_shared_with_the_ui(self):
        self.grant('view')
        uuid_c = str(self.data['uuid_c'])
        cases = (
            ({'kind': 'retry'}, [0, 1, 4]),
            ({'kind': ['gave_up', 'dispatch_failed']}, [3, 5]),
            ({'job_uuid': uuid_c}, [4, 5]),
            ({'job_id': self.data['job_b'].pk}, [3]),
            ({'q': uuid_c}, [4, 5]),
            ({'q': 'redis down'}, [3]),
            ({'worker': 'worker-1'}, [0, 1, 2]),
            ({'job_exists': 'false'}, [4, 5]),
        )
        for params, expected in cases:
            with self.subTest(params=params):
                response = self.get(reverse(LIST), params)
                self.assertHttpStatus(response, 200)
                self.assertEqual(sorted(r['id'] for r in response.json()['results']),
                                 sorted(self.events[i].pk for i in expected))

    def test_detail_representation_and_nested_job(self):
        self.grant('view')
        self.add_permissions('core.view_job')
        event = self.events[0]
        data = self.get(reverse(DETAIL, kwargs={'pk': event.pk})).json()
        self.assertEqual(data['kind'], {'value': 'retry', 'label': 'Retry'})
        self.assertEqual(data['job_uuid'], str(self.data['job_a'].job_id))
        self.assertEqual(data['job']['id'], self.data['job_a'].pk)
        self.assertEqual(data['job']['name'], 'nightly sync')
        self.assertEqual(data['job']['status']['value'], 'pending')
        self.assertTrue(data['job']['url'].endswith(f'/api/core/jobs/{self.data["job_a"].pk}/'))
        self.assertTrue(data['display_url'].endswith(f'/plugins/safejobs/retry-events/{event.pk}/'))
        self.assertEqual(data['delay'], 0.5)
        # An event whose job has no row: job is null, the snapshot identifies it.
        data = self.get(reverse(DETAIL, kwargs={'pk': self.events[5].pk})).json()
        self.assertIsNone(data['job'])
        self.assertEqual(data['job_name'], 'lost job')

    def test_newest_first(self):
        self.grant('view')
        results = self.get(reverse(LIST)).json()['results']
        times = [r['time'] for r in results]
        self.assertEqual(times, sorted(times, reverse=True))

    def test_count_is_bounded_past_the_page(self):
        self.grant('view')
        with mock.patch.object(bounded_count, 'COUNT_STEP', 2):
            body = self.get(reverse(LIST), {'limit': 1}).json()
            self.assertEqual((body['count'], len(body['results'])), (2, 1))
            self.assertIsNotNone(body['next'])
            # Counted to the next multiple of the step past offset + limit: all six from offset 3 on.
            body = self.get(reverse(LIST), {'limit': 1, 'offset': 3}).json()
            self.assertEqual(body['count'], 6)
            # Following "next" reaches every event.
            seen, url = [], reverse(LIST) + '?limit=2'
            while url:
                body = self.client.get(url, **self.header).json()
                seen += [r['id'] for r in body['results']]
                url = body['next']
            self.assertEqual(sorted(seen), sorted(e.pk for e in self.events))
        self.assertEqual(self.get(reverse(LIST)).json()['count'], 6)

    def test_ordering_by_the_lists_columns_only(self):
        self.grant('view')
        delays = [r['delay'] for r in self.get(reverse(LIST), {'ordering': '-delay'}).json()['results']]
        self.assertEqual(delays, [None, 12.0, 1.0, 0.5, 0.5, 0.25])
        # Not by the detail text (no index): the ordering is ignored, newest first as without it.
        times = [r['time'] for r in self.get(reverse(LIST), {'ordering': 'detail'}).json()['results']]
        self.assertEqual(times, sorted(times, reverse=True))

    def test_constrained_permissions(self):
        self.grant('view', constraints={'kind': 'retry'})
        self.grant('delete', constraints={'worker_host': 'worker-2'})
        ids = sorted(r['id'] for r in self.get(reverse(LIST)).json()['results'])
        self.assertEqual(ids, sorted(self.events[i].pk for i in (0, 1, 4)))
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.get(reverse(DETAIL, kwargs={'pk': self.events[5].pk})), 404)
            # view permitted, delete not (worker-1)
            self.assertHttpStatus(
                self.client.delete(reverse(DETAIL, kwargs={'pk': self.events[0].pk}), **self.header), 404)
        self.assertHttpStatus(
            self.client.delete(reverse(DETAIL, kwargs={'pk': self.events[4].pk}), **self.header), 204)
        self.assertFalse(RetryEvent.objects.filter(pk=self.events[4].pk).exists())

    @override_settings(EXEMPT_VIEW_PERMISSIONS=['netbox_safejobs.retryevent'])
    def test_exempt_view_permissions(self):
        self.assertHttpStatus(self.get(reverse(LIST)), 200)
        with disable_warnings('django.request'):
            self.assertHttpStatus(
                self.client.delete(reverse(DETAIL, kwargs={'pk': self.events[0].pk}), **self.header), 403)

    def test_anonymous_is_refused(self):
        with disable_warnings('django.request'):
            self.assertHttpStatus(self.client.get(reverse(LIST)), 403)

    def test_credentials_are_redacted(self):
        self.grant('view')
        event = events.record(RetryEventKindChoices.KIND_DATABASE_ERROR, job_uuid=uuid.uuid4(),
                              detail='OperationalError: connection to postgres://nb:topsecret@db/netbox failed')
        data = self.get(reverse(DETAIL, kwargs={'pk': event.pk})).json()
        self.assertNotIn('topsecret', data['detail'])
        self.assertIn('postgres://nb:***@db/netbox', data['detail'])

    def test_openapi_schema_has_the_endpoint(self):
        response = self.client.get(reverse('schema'), {'format': 'json'}, **self.header)
        self.assertHttpStatus(response, 200)
        paths = response.json()['paths']
        self.assertIn('/api/plugins/safejobs/retry-events/', paths)
        operations = paths['/api/plugins/safejobs/retry-events/{id}/']
        self.assertEqual(sorted(operations), ['delete', 'get', 'parameters'] if 'parameters' in operations
                         else ['delete', 'get'])
        self.assertEqual(sorted(paths['/api/plugins/safejobs/retry-events/']), ['get'])
        parameters = {p['name'] for p in paths['/api/plugins/safejobs/retry-events/']['get']['parameters']}
        self.assertTrue({'kind', 'job_uuid', 'job_name', 'runner', 'queue', 'worker', 'time__after', 'q'} <= parameters)

"""GraphQL: NetBox's GraphQL test case for the plugin's type, and the kind and job filters."""

import json

from django.urls import reverse
from utilities.testing import APITestCase, APIViewTestCases

from netbox_safejobs.graphql.types import RetryEventType
from netbox_safejobs.models import RetryEvent

from .ui_helpers import make_events


class RetryEventGraphQLTest(APIViewTestCases.GraphQLTestCase):
    model = RetryEvent
    type_class = RetryEventType
    graphql_base_name = 'netbox_safejobs_retry_event'

    @classmethod
    def setUpTestData(cls):
        make_events()


class RetryEventGraphQLFilterTest(APITestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()
        cls.events = cls.data['events']

    def query(self, filters):
        self.add_permissions('netbox_safejobs.view_retryevent')
        fields = 'id kind job_uuid job_name job {id name job_id}'
        query = 'query { netbox_safejobs_retry_event_list(filters: {' + filters + '}) {' + fields + '} }'
        response = self.client.post(reverse('graphql'), data={'query': query}, format='json', **self.header)
        self.assertHttpStatus(response, 200)
        data = json.loads(response.content)
        self.assertNotIn('errors', data, data)
        return data['data']['netbox_safejobs_retry_event_list']

    def ids(self, *indexes):
        return sorted(str(self.events[i].pk) for i in indexes)

    def test_filter_by_kind(self):
        rows = self.query('kind: {exact: "retry"}')
        self.assertEqual(sorted(r['id'] for r in rows), self.ids(0, 1, 4))
        self.assertEqual({r['kind'] for r in rows}, {'retry'})

    def test_filter_by_job_uuid(self):
        rows = self.query(f'job_uuid: {{exact: "{self.data["uuid_c"]}"}}')
        self.assertEqual(sorted(r['id'] for r in rows), self.ids(4, 5))
        self.assertEqual([r['job'] for r in rows], [None, None])

    def test_filter_by_job_id_and_name(self):
        rows = self.query(f'job_id: "{self.data["job_b"].pk}"')
        self.assertEqual([r['id'] for r in rows], self.ids(3))
        self.assertIsNone(rows[0]['job'], 'the nested job needs the permission to view jobs')
        self.add_permissions('core.view_job')
        rows = self.query(f'job_id: "{self.data["job_b"].pk}"')
        self.assertEqual(rows[0]['job'], {'id': str(self.data['job_b'].pk), 'name': 'report run',
                                          'job_id': str(self.data['job_b'].job_id)})
        rows = self.query('job_name: {i_contains: "NIGHTLY"}')
        self.assertEqual(sorted(r['id'] for r in rows), self.ids(0, 1, 2))

    def test_view_permission_constraints_apply(self):
        from core.models import ObjectType
        from users.models import ObjectPermission

        permission = ObjectPermission.objects.create(name='gave up', actions=['view'],
                                                     constraints={'kind': 'gave_up'})
        permission.users.add(self.user)
        permission.object_types.add(ObjectType.objects.get_for_model(RetryEvent))
        query = '{netbox_safejobs_retry_event_list {id kind}}'
        response = self.client.post(reverse('graphql'), data={'query': query}, format='json', **self.header)
        rows = json.loads(response.content)['data']['netbox_safejobs_retry_event_list']
        self.assertEqual([r['id'] for r in rows], self.ids(5))

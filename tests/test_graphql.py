"""
GraphQL: NetBox's GraphQL test case for the plugin's types, the kind and job filters of retry events, and the state
filter, permissions and fields of jobs in flight (never their stored push).
"""

import json

from django.urls import reverse
from utilities.testing import APITestCase, APIViewTestCases

from netbox_safejobs.graphql.types import JobDispatchType, RetryEventType
from netbox_safejobs.models import JobDispatch, RetryEvent

from .test_in_flight import EXPECTED, SECRET, make_dispatches
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


class JobDispatchGraphQLTest(APIViewTestCases.GraphQLTestCase):
    model = JobDispatch
    type_class = JobDispatchType
    graphql_base_name = 'netbox_safejobs_job_in_flight'

    @classmethod
    def setUpTestData(cls):
        make_dispatches()


class JobDispatchGraphQLBehaviourTest(APITestCase):

    @classmethod
    def setUpTestData(cls):
        cls.data = make_dispatches()
        cls.rows = cls.data['rows']

    def post(self, query):
        response = self.client.post(reverse('graphql'), data={'query': query}, format='json', **self.header)
        self.assertHttpStatus(response, 200)
        return json.loads(response.content)

    def query(self, arguments=''):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        fields = 'id job_uuid job_name state age scheduled queue_name worker_name last_heartbeat job {id name}'
        data = self.post('query { netbox_safejobs_job_in_flight_list' + arguments + ' {' + fields + '} }')
        self.assertNotIn('errors', data, data)
        return data['data']['netbox_safejobs_job_in_flight_list']

    def names(self, rows):
        by_uuid = {str(row.job_uuid): name for name, row in self.rows.items()}
        return sorted(by_uuid[r['job_uuid']] for r in rows)

    def test_states_as_the_list_page_decides_them(self):
        rows = self.query()
        self.assertEqual({by['job_uuid']: by['state'] for by in rows},
                         {str(self.rows[name].job_uuid): state for name, state in EXPECTED.items()})
        scheduled = next(r for r in rows if r['job_uuid'] == str(self.rows['scheduled'].job_uuid))
        self.assertIsNotNone(scheduled['scheduled'])
        self.assertEqual(scheduled['job_name'], 'job scheduled')
        self.assertGreater(scheduled['age'], 240)
        running = next(r for r in rows if r['job_uuid'] == str(self.rows['running'].job_uuid))
        self.assertEqual(running['worker_name'], 'w-live')
        self.assertIsNone(running['job'], 'the nested job needs the permission to view jobs')

    def test_filter_by_state_and_fields(self):
        self.assertEqual(self.names(self.query('(filters: {state: ["stuck", "owed"]})')),
                         ['gone', 'lost', 'owed', 'stuck'])
        self.assertEqual(self.names(self.query('(filters: {state: ["scheduled"]})')), ['scheduled'])
        uuid = self.rows['sent'].job_uuid
        self.assertEqual(self.names(self.query(f'(filters: {{job_uuid: {{exact: "{uuid}"}}}})')), ['sent'])
        self.assertEqual(self.names(self.query('(filters: {worker_host: {exact: "host-dead"}})')), ['long', 'stuck'])
        data = self.post('query { netbox_safejobs_job_in_flight_list(filters: {state: ["nonsense"]}) { id } }')
        self.assertIn("Unknown state(s) 'nonsense'", data['errors'][0]['message'])

    def test_the_stored_push_is_no_field(self):
        self.add_permissions('netbox_safejobs.view_jobdispatch')
        fields = {field.name for field in JobDispatchType.__strawberry_definition__.fields}
        self.assertFalse({'payload', 'token'} & fields)
        data = self.post('query { netbox_safejobs_job_in_flight_list { id payload } }')
        self.assertIn('errors', data)
        data = self.post(f'query {{ netbox_safejobs_job_in_flight(id: {self.rows["owed"].pk}) {{ id state }} }}')
        self.assertEqual(data['data']['netbox_safejobs_job_in_flight']['state'], 'owed')
        self.assertNotIn(SECRET.decode(), json.dumps(data))

    def test_view_permission_constraints_apply(self):
        from core.models import ObjectType
        from users.models import ObjectPermission

        permission = ObjectPermission.objects.create(name='live host', actions=['view'],
                                                     constraints={'worker_host': 'host-live'})
        permission.users.add(self.user)
        permission.object_types.add(ObjectType.objects.get_for_model(JobDispatch))
        data = self.post('query { netbox_safejobs_job_in_flight_list { job_uuid state } }')
        self.assertEqual(data['data']['netbox_safejobs_job_in_flight_list'],
                         [{'job_uuid': str(self.rows['running'].job_uuid), 'state': 'claimed'}])
        self.add_permissions('core.view_job')
        data = self.post('query { netbox_safejobs_job_in_flight_list { job { name } } }')
        self.assertEqual(data['data']['netbox_safejobs_job_in_flight_list'], [{'job': {'name': 'job running'}}])

    def test_without_permission(self):
        data = self.post('query { netbox_safejobs_job_in_flight_list { id } }')
        self.assertEqual(data['data']['netbox_safejobs_job_in_flight_list'], [])

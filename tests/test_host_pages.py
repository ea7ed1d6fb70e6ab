"""
NetBox's own pages that the plugin touches or extends, rendered with the plugin loaded: each answers 200 and
renders without an error.

- the dashboard with the plugin's widget on it;
- the "Add a Widget" dialog for every registered widget type, and the configure dialog of every registered widget
  (NetBox's HTMX views), and saving the plugin's widget with an empty title;
- the event rule add and edit forms, with the plugin's event types among the choices, and a rule made through the
  REST API with them saved again through the edit form;
- the Jobs list and a Job page (with the plugin's panel);
- Background Tasks: the queue list, a queue's task list, a task pushed through the plugin, the worker list;
- the plugin list and the plugin's page.
"""

import json
import re
import uuid
from contextlib import contextmanager

from core.models import Job, ObjectType
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from django_rq import get_queue
from django_rq.queues import get_queue_by_index
from extras.dashboard.utils import get_widget_class
from extras.models import Dashboard, EventRule, Webhook
from netbox.registry import registry
from rq.job import Job as RQJob
from utilities.testing import TestCase

from netbox_safejobs import event_types
from netbox_safejobs.models import RetryEvent
from netbox_safejobs.widgets import RetryEventsWidget

from .jobs import CountingJob
from .ui_helpers import make_events

HTMX = {'HTTP_HX_REQUEST': 'true'}
WIDGET = 'netbox_safejobs.RetryEventsWidget'
PLUGIN_EVENT_TYPES = (event_types.JOB_GAVE_UP, event_types.DISPATCH_FAILED)


class HostPageTestCase(TestCase):
    """
    A superuser who is also staff, as an administrator is (Background Tasks and the plugin list are for superusers
    from NetBox 4.5, for staff users on 4.2 - 4.4), and some retry events.
    """

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()

    def setUp(self):
        super().setUp()
        self.user.is_superuser = True
        self.user.is_staff = True
        self.user.save()

    @contextmanager
    def no_server_errors(self):
        # NetBox logs every unhandled exception of a view to django.request before answering 500.
        with self.assertNoLogs('django.request', 'ERROR'):
            yield

    def assert_in_page(self, needle, content):
        # Not assertIn: its message would hold the whole page.
        self.assertTrue(needle in content, f'{needle!r} is not on the page')

    def get_page(self, url, data=None, **headers):
        with self.no_server_errors():
            response = self.client.get(url, data or {}, **headers)
        self.assertHttpStatus(response, 200)
        return response.content.decode()


class DashboardTest(HostPageTestCase):

    def make_dashboard(self, *widget_names):
        """The user's dashboard with one widget of each of the given classes, in their default configuration."""
        layout, config = [], {}
        for index, name in enumerate(widget_names):
            widget_class = get_widget_class(name)
            widget_id = str(uuid.uuid4())
            layout.append({'id': widget_id, 'w': widget_class.width, 'h': widget_class.height, 'x': 0, 'y': index})
            config[widget_id] = {'class': name, 'title': None, 'color': None,
                                 'config': dict(widget_class.default_config)}
        Dashboard.objects.update_or_create(user=self.user, defaults={'layout': layout, 'config': config})
        return list(config)

    def test_dashboard_with_the_widget(self):
        self.add_permissions('netbox_safejobs.view_retryevent')
        self.make_dashboard(WIDGET, 'extras.NoteWidget')
        content = self.get_page(reverse('home'))
        self.assert_in_page('safejobs-widget', content)
        self.assert_in_page(str(RetryEventsWidget.default_title), content)
        self.assert_in_page('data-kind="retry"', content)

    def test_dashboard_with_the_widget_for_a_user_without_permissions(self):
        self.user.is_superuser = False
        self.user.save()
        self.make_dashboard(WIDGET)
        content = self.get_page(reverse('home'))
        self.assert_in_page('No permission to view retry events', content)

    def test_widget_titles_are_plain_strings(self):
        # NetBox's dialog renders each widget class (the template engine calls it) and str()s the instance, and
        # stores an empty title as the default one in the dashboard's JSON: a lazy translation breaks both.
        for name, widget_class in registry['widgets'].items():
            with self.subTest(widget=name):
                self.assertIsInstance(str(widget_class()), str)
                json.dumps(widget_class().form_data)

    def test_add_widget_dialog_for_every_widget_type(self):
        url = reverse('extras:dashboardwidget_add')
        for user_is_superuser in (True, False):
            self.user.is_superuser = user_is_superuser
            self.user.save()
            self.get_page(url, **HTMX)  # NetBox's default widget type first
            for name, widget_class in registry['widgets'].items():
                with self.subTest(widget=name, superuser=user_is_superuser):
                    content = self.get_page(url, {'widget_class': name}, **HTMX)
                    self.assert_in_page(f'value="{name}"', content)
                    if widget_class.description:
                        self.assert_in_page(str(widget_class.description), content)

    def test_configure_dialog_for_every_widget(self):
        names = list(registry['widgets'])
        ids = self.make_dashboard(*names)
        for name, widget_id in zip(names, ids, strict=True):
            with self.subTest(widget=name):
                url = reverse('extras:dashboardwidget_config', kwargs={'id': widget_id})
                content = self.get_page(url, **HTMX)
                self.assert_in_page(url, content)  # the form posts back to the dialog
        self.assert_in_page('config-hours', self.get_page(
            reverse('extras:dashboardwidget_config', kwargs={'id': ids[names.index(WIDGET)]}), **HTMX))

    def test_add_the_widget_with_an_empty_title(self):
        self.make_dashboard()
        with self.no_server_errors():
            response = self.client.post(reverse('extras:dashboardwidget_add'), {
                'widget_class': WIDGET, 'title': '', 'color': '', 'config-hours': '6',
            }, **HTMX)
        self.assertHttpStatus(response, 200)
        self.assertEqual(response.get('HX-Redirect'), reverse('home'))
        dashboard = Dashboard.objects.get(user=self.user)
        (stored,) = dashboard.config.values()
        self.assertEqual(stored['class'], WIDGET)
        self.assertEqual(stored['config'], {'hours': 6})
        # The title left empty is the widget's own for its hours.
        self.assertEqual(stored['title'], 'Retry events (6 hours)')
        self.add_permissions('netbox_safejobs.view_retryevent')
        content = self.get_page(reverse('home'))
        self.assert_in_page('All events, last 6 hours', content)
        self.assert_in_page('Retry events (6 hours)', content)

    def test_configure_the_widget_with_an_empty_title(self):
        (widget_id,) = self.make_dashboard(WIDGET)
        url = reverse('extras:dashboardwidget_config', kwargs={'id': widget_id})
        with self.no_server_errors():
            response = self.client.post(url, {'title': '', 'color': 'red', 'config-hours': '48'}, **HTMX)
        self.assertHttpStatus(response, 200)
        self.assertEqual(response.get('HX-Redirect'), reverse('home'))
        stored = Dashboard.objects.get(user=self.user).config[widget_id]
        self.assertEqual(stored['config'], {'hours': 48})
        self.assertEqual(stored['color'], 'red')
        self.add_permissions('netbox_safejobs.view_retryevent')
        content = self.get_page(reverse('home'))
        self.assert_in_page('Retry events (48 hours)', content)
        self.assert_in_page('All events, last 48 hours', content)
        self.assertNotIn(str(RetryEventsWidget.default_title), content)

    def test_configure_dialog_rejects_an_out_of_range_value(self):
        (widget_id,) = self.make_dashboard(WIDGET)
        url = reverse('extras:dashboardwidget_config', kwargs={'id': widget_id})
        with self.no_server_errors():
            response = self.client.post(url, {'title': '', 'color': '', 'config-hours': '0'}, **HTMX)
        self.assertHttpStatus(response, 200)
        self.assertIsNone(response.get('HX-Redirect'))
        self.assertEqual(Dashboard.objects.get(user=self.user).config[widget_id]['config'], {'hours': 24})


class EventRuleFormTest(HostPageTestCase):

    @classmethod
    def setUpTestData(cls):
        super().setUpTestData()
        cls.webhook = Webhook.objects.create(name='alerts', payload_url='http://alerts.example/')

    def assert_event_type_options(self, content, selected=()):
        for name in PLUGIN_EVENT_TYPES:
            option = re.search(rf'<option value="{re.escape(name)}"([^>]*)>', content)
            self.assertIsNotNone(option, f'no option {name} on the page')
            self.assertEqual('selected' in option.group(1), name in selected, option.group(0))

    def test_forms_offer_the_plugin_event_types(self):
        from extras.forms import EventRuleBulkEditForm, EventRuleFilterForm, EventRuleForm, EventRuleImportForm

        for form_class, field in ((EventRuleForm, 'event_types'), (EventRuleBulkEditForm, 'event_types'),
                                  (EventRuleImportForm, 'event_types'), (EventRuleFilterForm, 'event_type')):
            with self.subTest(form=form_class.__name__):
                choices = [value for value, _label in form_class().fields[field].choices]
                for name in PLUGIN_EVENT_TYPES:
                    self.assertIn(name, choices)
                self.assertIn('object_created', choices)

    def test_add_form(self):
        content = self.get_page(reverse('extras:eventrule_add'))
        self.assert_event_type_options(content)
        self.assert_in_page('Job gave up (safe jobs)', content)

    def test_rule_made_through_the_api_is_saved_again_through_the_edit_form(self):
        with self.no_server_errors():
            response = self.client.post(reverse('extras-api:eventrule-list'), data=json.dumps({
                'name': 'safe jobs alerts',
                'object_types': ['netbox_safejobs.retryevent'],
                'event_types': list(PLUGIN_EVENT_TYPES),
                'action_type': 'webhook',
                'action_object_type': 'extras.webhook',
                'action_object_id': self.webhook.pk,
            }), content_type='application/json')
        self.assertHttpStatus(response, 201)
        rule = EventRule.objects.get(pk=response.json()['id'])

        url = reverse('extras:eventrule_edit', kwargs={'pk': rule.pk})
        self.assert_event_type_options(self.get_page(url), selected=PLUGIN_EVENT_TYPES)

        with self.no_server_errors():
            response = self.client.post(url, {
                'name': 'safe jobs alerts',
                'object_types': [ObjectType.objects.get_for_model(RetryEvent).pk],
                'enabled': 'on',
                'event_types': [event_types.JOB_GAVE_UP],
                'action_type': 'webhook',
                'action_choice': self.webhook.pk,
                'conditions': '',
                'action_data': '',
            })
        self.assertHttpStatus(response, 302)
        rule.refresh_from_db()
        self.assertEqual(rule.event_types, [event_types.JOB_GAVE_UP])
        content = self.get_page(rule.get_absolute_url())
        self.assert_in_page('Job gave up (safe jobs)', content)

    def test_rule_list_filtered_by_a_plugin_event_type(self):
        content = self.get_page(reverse('extras:eventrule_list'), {'event_type': event_types.JOB_GAVE_UP})
        self.assert_event_type_options(content, selected=(event_types.JOB_GAVE_UP,))


class JobPagesTest(HostPageTestCase):

    def test_jobs_list(self):
        content = self.get_page(reverse('core:job_list'))
        self.assert_in_page(reverse('core:job', kwargs={'pk': self.data['job_a'].pk}), content)

    def test_job_page_with_the_plugin_panel(self):
        content = self.get_page(reverse('core:job', kwargs={'pk': self.data['job_a'].pk}))
        self.assert_in_page('safejobs-job-panel', content)

    def test_job_page_without_events(self):
        job = Job.objects.create(name='quiet', job_id=uuid.uuid4())
        self.assertFalse('safejobs-job-panel' in self.get_page(reverse('core:job', kwargs={'pk': job.pk})))


class BackgroundTasksTest(HostPageTestCase):
    """NetBox's Background Tasks pages, with a task that the plugin pushed to RQ after its Job row committed."""

    def setUp(self):
        super().setUp()
        with self.captureOnCommitCallbacks(execute=True):
            self.job = CountingJob.enqueue()
        self.rq_job = RQJob.fetch(str(self.job.job_id), connection=get_queue('default').connection)
        self.addCleanup(self.rq_job.delete)
        self.queue_index = next(index for index in range(len(settings.RQ_QUEUES))
                                if get_queue_by_index(index).name == self.rq_job.origin)

    def test_queue_list(self):
        self.assert_in_page('default', self.get_page(reverse('core:background_queue_list')))

    def test_task_list_of_the_queue(self):
        url = reverse('core:background_task_list', kwargs={'queue_index': self.queue_index, 'status': 'queued'})
        self.assert_in_page(str(self.job.job_id), self.get_page(url))

    def test_task_page(self):
        content = self.get_page(reverse('core:background_task', kwargs={'job_id': str(self.job.job_id)}))
        self.assert_in_page(str(self.job.job_id), content)

    def test_worker_list(self):
        self.get_page(reverse('core:worker_list', kwargs={'queue_index': self.queue_index}))

    def test_job_page_of_the_pushed_job(self):
        self.get_page(reverse('core:job', kwargs={'pk': self.job.pk}))


@override_settings(ISOLATED_DEPLOYMENT=True)
class PluginPagesTest(HostPageTestCase):

    def test_plugin_list(self):
        self.assert_in_page('netbox_safejobs', self.get_page(reverse('core:plugin_list')))

    def test_plugin_page(self):
        self.assert_in_page('Safe Jobs', self.get_page(reverse('core:plugin', kwargs={'name': 'netbox_safejobs'})))

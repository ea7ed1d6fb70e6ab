"""
Every view of the plugin that takes a ``return_url`` (the Stop page, Stop selected, an event's delete and the
events' bulk delete): a URL that fails NetBox's own check is neither shown as the Cancel link nor redirected to.
"""

import uuid

from core.models import Job
from django.urls import reverse
from utilities.testing import TestCase

from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent

# What an attacker puts in a link to the page: a script run by the Cancel link, another host, a protocol-relative URL.
UNSAFE = ('javascript:alert(1)', 'https://evil.example/x', '//evil.example/x', 'JavaScript:alert(1)')


class ReturnURLTest(TestCase):

    def setUp(self):
        super().setUp()
        self.user.is_superuser = True
        self.user.save()
        self.job = Job.objects.create(name='a job', job_id=uuid.uuid4())
        self.event = RetryEvent.objects.create(kind=RetryEventKindChoices.KIND_RETRY, job=self.job,
                                               job_uuid=self.job.job_id, job_name='a job', detail='d')

    def assertNotUnsafe(self, response, url):
        self.assertNotIn(f'href="{url}"', response.content.decode())
        self.assertNotIn('evil.example', response.content.decode())
        self.assertNotIn('javascript:', response.content.decode().lower())

    def assertRedirectsSafely(self, response, expected):
        self.assertEqual(response.status_code, 302, response.content[:500])
        self.assertEqual(response['Location'], expected)

    def test_stop_page(self):
        url = reverse('plugins:netbox_safejobs:job_stop', kwargs={'pk': self.job.pk})
        for unsafe in UNSAFE:
            with self.subTest(unsafe=unsafe):
                response = self.client.get(url, {'return_url': unsafe})
                self.assertEqual(response.status_code, 200)
                self.assertNotUnsafe(response, unsafe)
                self.assertContains(response, f'href="{self.job.get_absolute_url()}"')
                self.assertRedirectsSafely(self.client.post(url, {'return_url': unsafe, '_confirm': ''}),
                                           self.job.get_absolute_url())
        # A safe one is kept.
        self.assertRedirectsSafely(self.client.post(url, {'return_url': '/core/jobs/', '_confirm': ''}), '/core/jobs/')
        self.assertContains(self.client.get(url, {'return_url': '/core/jobs/'}), 'href="/core/jobs/"')

    def test_stop_selected(self):
        url = reverse('plugins:netbox_safejobs:jobdispatch_bulk_stop')
        in_flight = reverse('plugins:netbox_safejobs:jobdispatch_list')
        for unsafe in UNSAFE:
            with self.subTest(unsafe=unsafe):
                self.assertRedirectsSafely(self.client.post(url, {'return_url': unsafe}), in_flight)
                self.assertRedirectsSafely(
                    self.client.post(url, {'return_url': unsafe, '_confirm': '', 'job': [self.job.pk]}), in_flight)
                self.assertRedirectsSafely(self.client.get(url, {'return_url': unsafe}), in_flight)

    def test_event_delete(self):
        url = reverse('plugins:netbox_safejobs:retryevent_delete', kwargs={'pk': self.event.pk})
        for unsafe in UNSAFE:
            with self.subTest(unsafe=unsafe):
                response = self.client.get(url, {'return_url': unsafe})
                self.assertEqual(response.status_code, 200)
                self.assertNotUnsafe(response, unsafe)
        # Cancel goes back to the event; after the delete, to the list.
        self.assertContains(self.client.get(url), f'href="{self.event.get_absolute_url()}"')
        response = self.client.post(url, {'return_url': '//evil.example/x', 'confirm': True})
        self.assertRedirectsSafely(response, reverse('plugins:netbox_safejobs:retryevent_list'))
        self.assertFalse(RetryEvent.objects.exists())

    def test_event_bulk_delete(self):
        url = reverse('plugins:netbox_safejobs:retryevent_bulk_delete')
        for unsafe in UNSAFE:
            with self.subTest(unsafe=unsafe):
                response = self.client.post(url, {'pk': [self.event.pk], 'return_url': unsafe})
                self.assertEqual(response.status_code, 200)
                self.assertNotUnsafe(response, unsafe)
        response = self.client.post(url, {'pk': [self.event.pk], 'return_url': 'https://evil.example/x',
                                          '_confirm': True, 'confirm': True})
        self.assertRedirectsSafely(response, reverse('plugins:netbox_safejobs:retryevent_list'))
        self.assertFalse(RetryEvent.objects.exists())

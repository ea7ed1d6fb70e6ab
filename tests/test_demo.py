"""`netbox safejobs_demo` provokes every kind of retry event against a real worker."""

from io import StringIO

from django.core.management import call_command

from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.models import RetryEvent

from .base import SafeJobsTransactionTestCase, Worker


class DemoCommandTest(SafeJobsTransactionTestCase):

    def test_every_kind_of_event(self):
        worker = Worker(burst=False)
        try:
            out = StringIO()
            call_command('safejobs_demo', '--wait', '90', stdout=out)
        finally:
            worker.kill()
        self.assertIn('Every kind of event was recorded', out.getvalue())
        kinds = set(RetryEvent.objects.values_list('kind', flat=True))
        self.assertEqual(kinds, set(RetryEventKindChoices.values()))

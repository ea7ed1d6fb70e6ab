"""
One end-to-end pass in a real browser: Debian's chromium driven by playwright, against `netbox runserver` on this
test run's database. Log in, open the retry event list, filter it by kind, open an event, follow it to NetBox's Job
page and see the plugin's panel there.

Skipped, saying why, only when /usr/bin/chromium or the playwright package is missing (`scripts/dev test`
installs both when it can).
"""

import os
import socket
import subprocess
import time
import unittest
import uuid
from datetime import timedelta

from core.models import Job
from django.test import TransactionTestCase
from django.utils import timezone
from users.models import User

from netbox_safejobs.models import RetryEvent

from .base import netbox_command, worker_env

CHROMIUM = '/usr/bin/chromium'

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@unittest.skipIf(not os.path.exists(CHROMIUM), f'{CHROMIUM} is missing (Debian package "chromium")')
@unittest.skipIf(sync_playwright is None, 'the playwright Python package is not installed')
class BrowserTest(TransactionTestCase):
    password = 'browser-test-pw-1'

    def setUp(self):
        super().setUp()
        self.user = User.objects.create_user(username='operator', password=self.password, is_superuser=True)
        now = timezone.now()
        self.job = Job.objects.create(name='nightly sync', job_id=uuid.uuid4())
        self.retry = RetryEvent.objects.create(
            job=self.job, job_uuid=self.job.job_id, job_name=self.job.name, kind='retry', attempt=1, delay=0.5,
            runner='core.jobs.SyncDataSourceJob', queue='low', worker_host='worker-1', worker_pid=4242,
            detail='Job row not found; looking again.', time=now - timedelta(seconds=5),
        )
        self.found = RetryEvent.objects.create(
            job=self.job, job_uuid=self.job.job_id, job_name=self.job.name, kind='found_after_retry', attempt=1,
            delay=0.5, worker_host='worker-1', detail='Job row found after 1 retries.', time=now,
        )
        self.other = RetryEvent.objects.create(job_uuid=uuid.uuid4(), job_name='lost job', kind='gave_up',
                                               time=now - timedelta(minutes=1))
        self.port = free_port()
        self.server = subprocess.Popen(
            netbox_command('runserver', '--noreload', '--insecure', f'127.0.0.1:{self.port}'),
            env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
        )
        self.addCleanup(self.stop_server)
        self.wait_for_port()

    def stop_server(self):
        if self.server.poll() is None:
            os.killpg(self.server.pid, 15)
            try:
                self.server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, 9)
                self.server.communicate()

    def wait_for_port(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise AssertionError(f'runserver exited:\n{self.server.stdout.read()}')
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f'runserver did not listen on port {self.port} within {timeout}s')

    def test_list_filter_event_job_page(self):
        base = f'http://127.0.0.1:{self.port}'
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(30000)

                # Log in
                page.goto(f'{base}/plugins/safejobs/retry-events/')
                self.assertIn('/login/', page.url)
                page.fill('input[name="username"]', 'operator')
                page.fill('input[name="password"]', self.password)
                page.click('button[type="submit"]')
                page.wait_for_url('**/plugins/safejobs/retry-events/**')

                # The list shows all three events
                rows = page.locator('table.object-list tbody tr')
                self.assertEqual(rows.count(), 3)
                self.assertIn('Found after retry', page.inner_text('table.object-list'))

                # Filter by kind with the filter form
                page.click('#filters-form-tab')
                page.evaluate(
                    """() => {
                        const select = document.querySelector('select[name="kind"]');
                        if (select.tomselect) { select.tomselect.setValue(['retry']); }
                        else { for (const o of select.options) { o.selected = o.value === 'retry'; } }
                    }"""
                )
                page.locator('#filters-form button[type="submit"]').first.click()
                page.wait_for_url('**kind=retry**')
                rows = page.locator('table.object-list tbody tr')
                self.assertEqual(rows.count(), 1)
                self.assertIn('Retry', rows.first.inner_text())
                self.assertNotIn('lost job', page.inner_text('table.object-list'))

                # Open the event
                page.click(f'table.object-list a[href="/plugins/safejobs/retry-events/{self.retry.pk}/"]')
                page.wait_for_url(f'**/plugins/safejobs/retry-events/{self.retry.pk}/')
                self.assertIn('core.jobs.SyncDataSourceJob', page.content())

                # Follow it to NetBox's Job page and see the panel with both events of the job
                page.click('#safejobs-job-link')
                page.wait_for_url(f'**/core/jobs/{self.job.pk}/')
                panel = page.locator('#safejobs-job-panel')
                panel.wait_for()
                text = panel.inner_text()
                self.assertIn('Retry', text)
                self.assertIn('Found after retry', text)
                self.assertEqual(panel.locator('tbody tr').count(), 2)
                self.assertNotIn('lost job', text)
            finally:
                browser.close()

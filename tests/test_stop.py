"""
Stopping a running job (``stopping.py``): from NetBox's Job page, from the jobs in flight (one and several), through
the REST API, and by deleting it. Real workers, real PostgreSQL and Redis; the work horse must be gone within 2 s of
the request, the job closed once, nothing re-created.
"""

import signal
import subprocess
import time

from core.models import Job, ObjectType
from django.contrib.messages import get_messages
from django.test import SimpleTestCase
from django.urls import reverse
from django.utils import timezone
from django_rq import get_connection
from users.models import ObjectPermission, User
from utilities.testing import APITestCase

from netbox_safejobs.choices import RetryEventKindChoices as Kind
from netbox_safejobs.models import JobDispatch, RetryEvent

from .base import RunningJobTestCase
from .jobs import CountingJob, run_count

# The target: the work horse gone within this many seconds of the operator's request.
STOP_WITHIN = 2.0


def stop_url(job):
    return reverse('plugins:netbox_safejobs:job_stop', kwargs={'pk': job.pk})


def grant_stop(user, constraints=None):
    permission = ObjectPermission.objects.create(name='stop jobs', actions=['view', 'stop'], constraints=constraints)
    permission.object_types.add(ObjectType.objects.get_for_model(Job))
    permission.users.add(user)
    return permission


class StopRunningJobTest(RunningJobTestCase):

    def setUp(self):
        super().setUp()
        self.user = User.objects.create_user(username='operator')
        grant_stop(self.user)
        self.client.force_login(self.user)

    def running(self, **kwargs):
        job = CountingJob.enqueue(sleep=120, **kwargs)
        worker = self.start_worker()
        lease = self.wait_running(job, worker)
        # The work horse only: the worker's other child, RQ's scheduler, lives on.
        return job, worker, [lease.worker_pid]

    def assert_horse_gone_within(self, worker, horses, started, bound=STOP_WITHIN):
        try:
            self.wait_for(lambda: not set(horses) & set(worker.children()), timeout=30, interval=0.02,
                          message='work horse gone')
        except AssertionError:
            worker.kill()
            raise AssertionError(f'work horse not stopped; the worker said:\n{worker.output[-3000:]}') from None
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, bound, f'work horse gone {elapsed:.2f} s after the request')
        return elapsed

    def closed(self, job):
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'errored', timeout=30, message='job closed')
        job.refresh_from_db()
        return job

    def test_stop_from_the_job_page_schedules_the_next_run(self):
        job, worker, horses = self.running(interval=30)
        page = self.client.get(job.get_absolute_url())
        self.assertContains(page, 'id="safejobs-stop"')
        confirm = self.client.get(stop_url(job))
        self.assertContains(confirm, 'name="next_run"')
        started = time.monotonic()
        response = self.client.post(stop_url(job), {'next_run': 'true', '_confirm': ''})
        self.assertEqual(response.status_code, 302)
        self.assert_horse_gone_within(worker, horses, started)
        job = self.closed(job)
        self.assertIn('Stopped by operator', job.error)
        event = RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_OPERATOR_STOPPED)
        self.assertIn('next run of this periodic job is scheduled', event.detail)
        self.assertEqual(Job.objects.filter(name=CountingJob.name, status='scheduled').count(), 1)
        self.assertFalse(JobDispatch.objects.filter(job=job).exists())
        self.assertEqual(run_count(job.job_id), 1)
        self.assertIsNone(worker.process.poll(), 'the worker died with its work horse')
        # A second stop of the finished job: a message, not an error.
        response = self.client.post(stop_url(job), {'_confirm': ''}, follow=True)
        self.assertEqual(response.status_code, 200)
        self.assertIn('is not running', ' '.join(str(m) for m in get_messages(response.wsgi_request)))
        self.assertNotContains(self.client.get(job.get_absolute_url()), 'id="safejobs-stop"')

    def test_command_lost_the_worker_stops_it_from_the_lease_without_next_run(self):
        """RQ's command never sent (Redis lost it): the worker's loop finds the request on its lease."""
        job, worker, horses = self.running(interval=30)
        started = time.monotonic()
        JobDispatch.objects.filter(job=job).update(stop_requested=timezone.now(), stopped_by='night shift',
                                                  stop_next_run=False)
        # relay_interval is 0.5 s here: one tick of the loop, and the work horse's end.
        self.assert_horse_gone_within(worker, horses, started)
        job = self.closed(job)
        self.assertIn('Stopped by night shift', job.error)
        self.assertEqual(job.interval, 30, 'the run lost its interval')
        self.assertFalse(Job.objects.filter(name=CountingJob.name, status='scheduled').exists())
        event = RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_OPERATOR_STOPPED)
        self.assertIn('No next run was scheduled', event.detail)

    def test_bulk_stop_from_the_jobs_in_flight(self):
        job, worker, horses = self.running()
        finished = Job.objects.create(name='finished', status='completed',
                                      job_id='00000000-0000-4000-8000-000000000002')
        row = JobDispatch.objects.get(job=job)
        viewing = ObjectPermission.objects.create(name='view in flight', actions=['view'])
        viewing.object_types.add(ObjectType.objects.get_for_model(JobDispatch))
        viewing.users.add(self.user)
        listing = self.client.get(reverse('plugins:netbox_safejobs:jobdispatch_list'))
        self.assertContains(listing, 'Stop Selected')
        url = reverse('plugins:netbox_safejobs:jobdispatch_bulk_stop')
        confirm = self.client.post(url, {'pk': [row.pk]})
        self.assertContains(confirm, f'name="job" value="{job.pk}"')
        started = time.monotonic()
        response = self.client.post(url, {'job': [job.pk, finished.pk], '_confirm': ''}, follow=True)
        self.assert_horse_gone_within(worker, horses, started)
        said = [str(m) for m in get_messages(response.wsgi_request)]
        self.assertTrue(any(f'Stopping job {job}' in m for m in said), said)
        self.assertTrue(any('is not running' in m for m in said), said)
        self.assertEqual(self.closed(job).status, 'errored')
        self.assertEqual(Job.objects.get(pk=finished.pk).status, 'completed')

    def test_rest_api_stops_a_running_job(self):
        job, worker, horses = self.running()
        url = reverse('plugins-api:netbox_safejobs-api:jobdispatch-stop-jobs')
        started = time.monotonic()
        response = self.client.post(url, {'jobs': [job.pk, 999999], 'next_run': False}, content_type='application/json')
        self.assertEqual(response.status_code, 200, response.content)
        outcomes = {item['job']: item['outcome'] for item in response.json()}
        self.assertEqual(outcomes, {job.pk: 'stopping', 999999: 'not_found'})
        self.assert_horse_gone_within(worker, horses, started)
        self.assertIn('Stopped by operator', self.closed(job).error)

    def test_deleting_a_running_job_stops_its_work_horse(self):
        job, worker, horses = self.running(interval=30)
        started = time.monotonic()
        Job.objects.get(pk=job.pk).delete()
        self.assert_horse_gone_within(worker, horses, started)
        time.sleep(1)
        self.assertFalse(Job.objects.filter(pk=job.pk).exists(), 'the deleted job came back')
        self.assertFalse(Job.objects.filter(name=CountingJob.name).exists(), 'a next run was scheduled')
        event = RetryEvent.objects.get(job_uuid=job.job_id, kind=Kind.KIND_OPERATOR_STOPPED)
        self.assertIn('Deleted while it ran', event.detail)
        self.assertEqual(run_count(job.job_id), 1)


class StopPermissionTest(RunningJobTestCase):
    """Who may stop which job: the stop permission and its constraints, on every door."""

    def test_without_the_permission_nothing_is_stopped(self):
        job = CountingJob.enqueue(sleep=120)
        worker = self.start_worker()
        self.wait_running(job, worker)
        viewer = User.objects.create_user(username='viewer')
        permission = ObjectPermission.objects.create(name='view jobs', actions=['view'])
        permission.object_types.add(ObjectType.objects.get_for_model(Job))
        permission.users.add(viewer)
        self.client.force_login(viewer)
        self.assertNotContains(self.client.get(job.get_absolute_url()), 'id="safejobs-stop"')
        self.assertEqual(self.client.post(stop_url(job), {'_confirm': ''}).status_code, 403)
        url = reverse('plugins-api:netbox_safejobs-api:jobdispatch-stop-jobs')
        self.assertEqual(self.client.post(url, {'jobs': [job.pk]}, content_type='application/json').status_code, 403)
        # A constraint that excludes the job: 404 on the page, not_found in the API.
        grant_stop(viewer, constraints={'name': 'another job'})
        self.assertEqual(self.client.post(stop_url(job), {'_confirm': ''}).status_code, 404)
        response = self.client.post(url, {'jobs': [job.pk]}, content_type='application/json')
        self.assertEqual(response.json()[0]['outcome'], 'not_found')
        self.assertFalse(JobDispatch.objects.filter(job=job, stop_requested__isnull=False).exists())
        self.assertEqual(Job.objects.get(pk=job.pk).status, 'running')


class StopAPIBehaviourTest(APITestCase):
    """Bad bodies and tokens: clear errors (no worker needed)."""
    model = JobDispatch

    def url(self):
        return reverse('plugins-api:netbox_safejobs-api:jobdispatch-stop-jobs')

    def test_bad_bodies_are_400_with_the_field_named(self):
        grant_stop(self.user)
        bodies = ({}, {'jobs': []}, {'jobs': 'x'}, {'jobs': [1.5]}, {'jobs': [True]},
                  {'jobs': [1], 'next_run': 'maybe'})
        for body in bodies:
            with self.subTest(body=body):
                response = self.client.post(self.url(), body, format='json', **self.header)
                self.assertHttpStatus(response, 400)
                self.assertTrue(set(response.json()) & {'jobs', 'next_run'}, response.json())

    def test_not_running_is_an_answer_not_an_error(self):
        grant_stop(self.user)
        job = Job.objects.create(name='finished', status='completed', job_id='00000000-0000-4000-8000-000000000001')
        response = self.client.post(self.url(), {'jobs': [job.pk]}, format='json', **self.header)
        self.assertHttpStatus(response, 200)
        self.assertEqual(response.json()[0]['outcome'], 'not_running')

    def test_a_read_only_token_may_not_stop(self):
        grant_stop(self.user)
        self.token.write_enabled = False
        self.token.save()
        response = self.client.post(self.url(), {'jobs': [1]}, format='json', **self.header)
        self.assertHttpStatus(response, 403)


class StopHorseTest(SimpleTestCase):
    """
    The worker loop's backstop kills the work horse it checked (``stopping.stop_horse``), never one read again: the
    worker's main thread may have reaped that horse and forked the next job's in between.
    """

    def test_the_checked_horse_is_killed_not_the_next_one(self):
        from rq.worker import Worker as RQWorker

        from netbox_safejobs import stopping

        def sleeper():
            process = subprocess.Popen(['sleep', '60'], start_new_session=True)
            self.addCleanup(lambda: (process.kill(), process.wait()))
            return process

        checked, forked_since = sleeper(), sleeper()

        class Worker(RQWorker):
            # RQ's own worker, whose horse changes once it has been read: the race, made certain.
            reads = 0

            @property
            def horse_pid(self):
                self.reads += 1
                return checked.pid if self.reads == 1 else forked_since.pid

        worker = Worker(['default'], connection=get_connection('default'))
        self.assertTrue(stopping.stop_horse(worker, 'task', checked.pid))
        self.assertEqual(checked.wait(timeout=10), -signal.SIGKILL)
        time.sleep(0.2)
        self.assertIsNone(forked_since.poll(), "the next job's work horse was killed")
        self.assertEqual(worker._stopped_job_id, 'task')

    def test_a_horse_that_ended_is_nothing_to_stop(self):
        from netbox_safejobs import stopping

        process = subprocess.Popen(['true'], start_new_session=True)
        process.wait()
        # Reaped: its pid names nothing; the worker (this process) and its group are left alone.
        stopping.kill_horse(process.pid)
        # Not in a group of its own yet: killed alone, not this process's group.
        child = subprocess.Popen(['sleep', '60'])
        stopping.kill_horse(child.pid)
        self.assertEqual(child.wait(timeout=10), -signal.SIGKILL)

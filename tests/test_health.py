"""
The health check (``netbox safejobs_check``, ``/api/plugins/safejobs/health/``, the Health panel) and the gauges on
``/metrics``, against real services: a private Redis with a bad configuration, real ``netbox rqworker`` processes with
and without the plugin's loop and guard, real owed pushes, leases and stuck candidates.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

from core.models import Job
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.template import Context, Template
from django.test import RequestFactory, TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from django.utils import timezone
from netbox.urls import urlpatterns as netbox_urlpatterns
from prometheus_client.parser import text_string_to_metric_families

from netbox_safejobs import compat, health, liveness, metrics
from netbox_safejobs.markup import help_html
from netbox_safejobs.models import JobDispatch, WorkerHeartbeat
from netbox_safejobs.testing.processes import RedisServer, free_port, stop_process_group
from netbox_safejobs.testing.queues import override_rq_queues, queues_on
from netbox_safejobs.version import __version__

from .base import SafeJobsTransactionTestCase, Worker, netbox_command, worker_env
from .jobs import CountingJob, run_count

# NetBox's URLs plus /metrics, included as NetBox includes it when METRICS_ENABLED is set (the test configuration
# leaves it off).
urlpatterns = [
    path('', include('django_prometheus.urls')),
    *netbox_urlpatterns,
]

LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10, 'relay_interval': 0.5}
UNGUARDED = {'worker_loop': False, 'worker_guard': False}


def lively_settings():
    return override_settings(PLUGINS_CONFIG={**settings.PLUGINS_CONFIG, 'netbox_safejobs': dict(LIVELY)})


def private_redis(test, *options):
    """A redis-server of its own on a free port, with these configuration arguments; stopped after ``test``."""
    workdir = tempfile.mkdtemp(prefix='safejobs-health-redis-')
    test.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    redis = RedisServer(workdir, options=options).start()
    test.addCleanup(redis.stop)
    return redis


def findings(report, check=None, level=None):
    return [f for f in report.findings if (check is None or f.check == check) and (level is None or f.level == level)]


def run_check_command(*args, **env):
    """``netbox safejobs_check`` in its own process: (exit status, stdout, stderr)."""
    process = subprocess.run(netbox_command('safejobs_check', *args), env=worker_env(**env), capture_output=True,
                             text=True, timeout=180)
    return process.returncode, process.stdout, process.stderr


class RedisSettingsTest(SafeJobsTransactionTestCase):

    def test_allkeys_lru_without_persistence_warns_with_why_and_fix(self):
        redis = private_redis(self, '--maxmemory-policy', 'allkeys-lru', '--save', '', '--appendonly', 'no')
        with override_rq_queues(queues_on(redis.port)):
            report = health.check()
        warnings = findings(report, 'redis', 'warning')
        self.assertEqual(len(warnings), 2, report.as_text())
        policy, persistence = warnings
        self.assertIn('maxmemory-policy is allkeys-lru', policy.message)
        self.assertIn('noeviction', policy.fix)
        self.assertIn('evict', policy.why)
        self.assertIn('persistence is off', persistence.message)
        self.assertIn('appendonly yes', persistence.fix)
        self.assertIn('restart', persistence.why)
        self.assertEqual(report.status, 'warning')
        self.assertEqual(report.exit_code, 1)

    def test_noeviction_with_append_only_file_is_ok(self):
        redis = private_redis(self, '--maxmemory-policy', 'noeviction', '--appendonly', 'yes', '--save', '')
        with override_rq_queues(queues_on(redis.port)):
            report = health.check()
        self.assertEqual(findings(report, 'redis', 'warning') + findings(report, 'redis', 'error'), [],
                         report.as_text())
        self.assertIn('append-only file', report.as_text())

    def test_config_disabled_is_reported_not_raised(self):
        redis = private_redis(self, '--rename-command', 'CONFIG', '', '--maxmemory-policy', 'volatile-lru',
                              '--save', '', '--appendonly', 'no')
        with override_rq_queues(queues_on(redis.port)):
            report = health.check()
        redis_findings = findings(report, 'redis')
        # The policy is read from INFO; persistence cannot be told apart from "off" without CONFIG.
        self.assertIn('maxmemory-policy volatile-lru', redis_findings[0].message)
        self.assertIn('cannot be read', redis_findings[1].message)
        self.assertEqual(redis_findings[1].level, 'warning')


class WorkerTest(SafeJobsTransactionTestCase):

    def start_worker(self, config):
        worker = Worker('default', burst=False, env=worker_env(config))
        self.addCleanup(worker.kill)
        return worker

    def registered(self):
        return {w['pid']: w for w in compat.rq_workers(self.redis)}

    def test_worker_without_the_guard_is_an_error_naming_it(self):
        guarded = self.start_worker(LIVELY)
        unguarded = self.start_worker(UNGUARDED)
        self.wait_for(lambda: {guarded.pid, unguarded.pid} <= set(self.registered()), timeout=120,
                      message='both workers registered in RQ')
        self.wait_for(lambda: WorkerHeartbeat.objects.filter(pid=guarded.pid).exists(), timeout=30,
                      message='heartbeat of the guarded worker')
        name = self.registered()[unguarded.pid]['name']
        good_name = self.registered()[guarded.pid]['name']
        with lively_settings():
            report = health.check()
            gauges = {s.name: s.value for family in metrics.BacklogCollector().collect() for s in family.samples}
        errors = findings(report, 'workers', 'error')
        self.assertEqual(len(errors), 1, report.as_text())
        self.assertIn(name, errors[0].message)
        self.assertIn('without the worker guard', errors[0].message)
        self.assertIn('Restart it', errors[0].fix)
        self.assertNotIn(good_name, report.as_text().split('[OK]')[0])
        self.assertEqual(report.exit_code, 2)
        # The clock of the worker's host is compared with PostgreSQL's through its heartbeat.
        clocks = [f for f in findings(report, 'clock') if good_name in f.message]
        self.assertEqual(len(clocks), 1, report.as_text())
        self.assertEqual(clocks[0].level, 'ok')
        self.assertLess(abs(clocks[0].data['skew_seconds']), 5)
        self.assertEqual(gauges['netbox_safejobs_workers_without_plugin'], 1)
        self.assertEqual(gauges['netbox_safejobs_workers'], 1)

        # The command says the same, names the worker and exits 2.
        code, out, err = run_check_command('--format', 'json')
        self.assertEqual(code, 2, out + err)
        data = json.loads(out)
        self.assertEqual(data['status'], 'error')
        self.assertIn(name, ' '.join(f['message'] for f in data['findings'] if f['level'] == 'error'))
        self.assertNotIn('Traceback', err)

        unguarded.kill(signal.SIGTERM)
        self.wait_for(lambda: unguarded.pid not in self.registered(), timeout=30, message='unguarded worker gone')
        with lively_settings():
            report = health.check()
        self.assertEqual(findings(report, 'workers', 'error'), [], report.as_text())
        self.assertIn('All 1 RQ worker(s) run netbox-safejobs', report.as_text())

    def test_worker_with_the_loop_but_not_the_guard_is_an_error(self):
        """A worker that heartbeats but runs with worker_guard off says so in its heartbeat, and is named."""
        worker = self.start_worker({**LIVELY, 'worker_guard': False})
        self.wait_for(lambda: worker.pid in self.registered(), timeout=120, message='worker registered in RQ')
        self.wait_for(lambda: WorkerHeartbeat.objects.filter(pid=worker.pid).exists(), timeout=30,
                      message='heartbeat')
        self.assertFalse(WorkerHeartbeat.objects.get(pid=worker.pid).guard)
        with lively_settings():
            report = health.check()
        errors = findings(report, 'workers', 'error')
        self.assertEqual(len(errors), 1, report.as_text())
        self.assertIn(self.registered()[worker.pid]['name'], errors[0].message)
        self.assertIn('worker guard switched off', errors[0].message)
        self.assertIn('worker_guard', errors[0].fix)
        # Its clock, sent with each heartbeat, is this host's: no skew to speak of.
        clocks = [f for f in findings(report, 'clock') if 'worker host' in f.message]
        self.assertEqual(len(clocks), 1, report.as_text())
        self.assertLess(abs(clocks[0].data['skew_seconds']), 1)

    def test_workers_of_two_versions(self):
        table = WorkerHeartbeat._meta.db_table
        with connection.cursor() as cursor:
            for name, version in (('current-worker', __version__), ('old-worker', '0.0.9')):
                cursor.execute(
                    f'INSERT INTO {table} (id, name, host, pid, version, started, seen) '
                    f"VALUES (%s, %s, 'worker-host', 4242, %s, clock_timestamp(), clock_timestamp())",
                    [uuid.uuid4(), name, version],
                )
        report = health.check()
        errors = findings(report, 'versions', 'error')
        self.assertEqual(len(errors), 1, report.as_text())
        self.assertIn('old-worker', errors[0].message)
        self.assertIn('0.0.9', errors[0].message)
        self.assertIn(__version__, errors[0].message)
        self.assertIn('Finish the upgrade', errors[0].fix)
        self.assertEqual(report.exit_code, 2)


class BacklogGaugesTest(SafeJobsTransactionTestCase):

    def scrape(self):
        with override_settings(ROOT_URLCONF=__name__):
            response = self.client.get('/metrics')
        self.assertEqual(response.status_code, 200)
        values = {}
        for line in response.content.decode().splitlines():
            if line.startswith('netbox_safejobs_') and not line.startswith('#'):
                key, value = line.rsplit(' ', 1)
                values[key] = float(value)
        return values

    def test_every_gauge_after_owed_pushes_leases_and_stuck_candidates(self):
        # A lease: a worker runs a long job.
        running = CountingJob.enqueue(sleep=120)
        worker = Worker('default', burst=False, env=worker_env(LIVELY))
        self.addCleanup(worker.kill)
        self.wait_for(lambda: run_count(running.job_id) == 1, timeout=120, message='run() entered')
        self.wait_for(lambda: worker.children(), timeout=30, message='work horse')
        with lively_settings():
            values = self.scrape()
        self.assertEqual(values['netbox_safejobs_claimed_leases'], 1)
        self.assertEqual(values['netbox_safejobs_stuck_candidates'], 0)
        self.assertEqual(values['netbox_safejobs_leases_without_heartbeat'], 0)
        self.assertEqual(values['netbox_safejobs_owed_pushes'], 0)
        self.assertEqual(values['netbox_safejobs_oldest_owed_age_seconds'], 0)
        self.assertEqual(values['netbox_safejobs_workers'], 1)
        self.assertEqual(values['netbox_safejobs_workers_without_plugin'], 0)

        # A stuck candidate: the worker and its work horse are killed (a host lost).
        horses = worker.children()
        os.kill(worker.pid, signal.SIGKILL)
        for pid in horses:
            os.kill(pid, signal.SIGKILL)
        worker.kill()
        # Owed: Redis refuses the push after the commit; the dispatch stores it as owed (one event each). No worker
        # is left to relay them.
        with override_rq_queues(queues_on(free_port())):
            owed = [CountingJob.enqueue() for _ in range(2)]
        self.assertEqual(JobDispatch.objects.filter(owed__isnull=False).count(), 2)
        with lively_settings():
            self.wait_for(lambda: liveness.stale_leases() != [], timeout=60, interval=0.5, message='stale lease')
            values = self.scrape()
            report = health.check()
            with CaptureQueriesContext(connection) as queries:
                list(metrics.BacklogCollector().collect())
        self.assertEqual(values['netbox_safejobs_stuck_candidates'], 1)
        self.assertEqual(values['netbox_safejobs_leases_without_heartbeat'], 1)
        self.assertEqual(values['netbox_safejobs_claimed_leases'], 1)
        self.assertEqual(values['netbox_safejobs_owed_pushes'], 2)
        self.assertGreater(values['netbox_safejobs_oldest_owed_age_seconds'], 0)
        self.assertLess(values['netbox_safejobs_oldest_owed_age_seconds'], 120)
        self.assertEqual(values['netbox_safejobs_events_last_hour{kind="dispatch_failed"}'], 2)
        self.assertEqual(values['netbox_safejobs_events_last_hour{kind="gave_up"}'], 0)
        self.assertEqual(values['netbox_safejobs_workers'], 0)
        self.assertEqual(len(queries), 2, [q['sql'] for q in queries])
        # The check reports the same backlog, with the fix.
        stuck = [f for f in findings(report, 'backlog', 'warning') if 'stuck' in f.message]
        self.assertEqual(len(stuck), 1, report.as_text())
        self.assertIn('safejobs_recover', stuck[0].fix)
        self.assertEqual(health.backlog()['owed'], len(owed))

    def test_old_owed_push_warns(self):
        with override_rq_queues(queues_on(free_port())):
            job = CountingJob.enqueue()
        JobDispatch.objects.filter(job=job).update(created=JobDispatch.objects.get(job=job).created.replace(
            year=2000))
        report = health.check()
        owed = findings(report, 'backlog', 'warning')
        self.assertEqual(len(owed), 1, report.as_text())
        self.assertIn('1 owed push(es)', owed[0].message)
        self.assertIn('netbox safejobs_recover', owed[0].fix)
        self.assertGreater(self.scrape()['netbox_safejobs_oldest_owed_age_seconds'], 60)


class BacklogStatementTest(SafeJobsTransactionTestCase):
    """
    ``health.backlog()`` counts each kind of row by the rules of the relay and the liveness check, whichever index
    part finds it: leases read worker by worker (live, quiet, dead and forgotten workers), owed rows written long ago
    or stamped owed a moment ago.
    """

    def dispatch(self, **fields):
        job = Job.objects.create(name=f'backlog {uuid.uuid4()}', job_id=uuid.uuid4())
        return JobDispatch.objects.create(job=job, job_uuid=job.job_id, queue_name='default',
                                          runner='tests.jobs.CountingJob', method='enqueue', **fields)

    def heartbeat(self, seen):
        return WorkerHeartbeat.objects.create(id=uuid.uuid4(), name=f'w-{uuid.uuid4().hex[:8]}', host='h', pid=1,
                                              version=__version__, started=seen, seen=seen)

    def test_empty_tables(self):
        self.assertEqual(health.backlog(), {'owed': 0, 'oldest_owed_age': 0.0, 'claimed': 0,
                                            'leases_without_heartbeat': 0, 'stuck': 0})

    def test_every_kind_of_row(self):
        now = timezone.now()

        def ago(seconds):
            return now - timedelta(seconds=seconds)

        day = 86400
        # Default settings: unknown_push_age 10 s; silent after 2 x heartbeat_interval = 20 s; stuck_after 60 s.
        live, quiet, dead = self.heartbeat(ago(0)), self.heartbeat(ago(35)), self.heartbeat(ago(day))
        forgotten = uuid.uuid4()  # a worker whose heartbeat row is gone
        leases = {
            'live worker, claimed long ago': (live.id, ago(day), None),
            'quiet worker': (quiet.id, ago(day), None),
            'dead worker': (dead.id, ago(day), None),
            'dead worker, its work horse heartbeats': (dead.id, ago(day), ago(5)),
            'dead worker, claimed 40 s ago': (dead.id, ago(40), None),
            'forgotten worker': (forgotten, ago(day), None),
            'forgotten worker, claimed 5 s ago': (forgotten, ago(5), None),
            'no worker (claimed by an earlier release)': (None, ago(day), None),
        }
        for worker, claimed, heartbeat in leases.values():
            self.dispatch(created=ago(day), sent=ago(day), claimed=claimed, worker=worker, heartbeat=heartbeat,
                          token=uuid.uuid4())
        self.dispatch(created=ago(2 * day))  # written, its pushing process lost: owed
        self.dispatch(created=ago(2), owed=ago(1))  # the push failed a moment ago: owed
        self.dispatch(created=ago(2))  # on its way
        self.dispatch(created=ago(3 * day), sent=ago(3 * day))  # queued in Redis

        values = health.backlog()
        self.assertEqual(values['claimed'], len(leases))
        # quiet, dead, dead 40 s ago, forgotten
        self.assertEqual(values['leases_without_heartbeat'], 4)
        # dead, forgotten: what the liveness check closes
        self.assertEqual(values['stuck'], 2)
        self.assertEqual(values['stuck'], len(liveness.stale_leases()))
        self.assertEqual(values['owed'], 2)
        self.assertAlmostEqual(values['oldest_owed_age'], 2 * day, delta=60)

        # With none written long ago, the oldest is the one stamped owed a moment ago.
        JobDispatch.objects.filter(created__lt=ago(day + 1), sent__isnull=True).delete()
        values = health.backlog()
        self.assertEqual(values['owed'], 1)
        self.assertLess(values['oldest_owed_age'], 60)


GAUGES = (
    'netbox_safejobs_owed_pushes', 'netbox_safejobs_oldest_owed_age_seconds', 'netbox_safejobs_claimed_leases',
    'netbox_safejobs_leases_without_heartbeat', 'netbox_safejobs_stuck_candidates', 'netbox_safejobs_events_last_hour',
    'netbox_safejobs_workers', 'netbox_safejobs_workers_without_plugin',
)


def families(text):
    """The metric families of a /metrics text, by name; fails on a family given twice (Prometheus rejects it)."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name in found:
            raise AssertionError(f'{family.name} given twice on /metrics')
        found[family.name] = family
    return found


def value(family, **labels):
    return next(s.value for s in family.samples if s.labels == labels)


class MetricsProcessModesTest(SafeJobsTransactionTestCase):
    """
    The gauges on NetBox's /metrics whichever way it is served: one process (the default registry), and
    prometheus_client's multiprocess mode, where django-prometheus's view serves the multiprocess files only.
    """

    def owe_one_push(self):
        with override_rq_queues(queues_on(free_port())):
            CountingJob.enqueue()

    def scrape(self):
        with override_settings(ROOT_URLCONF=__name__):
            response = self.client.get('/metrics')
        self.assertEqual(response.status_code, 200)
        return response.content.decode()

    def without_multiprocess(self):
        saved = {key: os.environ.pop(key) for key in ('PROMETHEUS_MULTIPROC_DIR', 'prometheus_multiproc_dir')
                 if key in os.environ}
        self.addCleanup(os.environ.update, saved)

    def test_single_process(self):
        self.without_multiprocess()
        self.owe_one_push()
        found = families(self.scrape())
        self.assertLessEqual(set(GAUGES), set(found))
        self.assertEqual(value(found['netbox_safejobs_owed_pushes']), 1)
        # The default registry's own metrics are there: this is the single-process page.
        self.assertIn('python_gc_objects_collected', found)

    def test_multiprocess_in_this_process(self):
        self.without_multiprocess()
        directory = tempfile.mkdtemp(prefix='safejobs-multiproc-')
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.owe_one_push()
        os.environ['PROMETHEUS_MULTIPROC_DIR'] = directory
        self.addCleanup(os.environ.pop, 'PROMETHEUS_MULTIPROC_DIR', None)
        found = families(self.scrape())
        self.assertLessEqual(set(GAUGES), set(found))
        self.assertEqual(value(found['netbox_safejobs_owed_pushes']), 1)
        self.assertEqual(value(found['netbox_safejobs_events_last_hour'], kind='dispatch_failed'), 1)
        # Served by django-prometheus's multiprocess registry, not the default one.
        self.assertNotIn('python_gc_objects_collected', found)
        # Other pages are left alone.
        response = self.client.get('/login/')
        self.assertNotIn(b'netbox_safejobs_', response.content)

    def test_multiprocess_gunicorn(self):
        """NetBox under gunicorn with two worker processes, METRICS_ENABLED and PROMETHEUS_MULTIPROC_DIR."""
        import netbox.settings

        self.owe_one_push()
        work = tempfile.mkdtemp(prefix='safejobs-gunicorn-')
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        multiproc = os.path.join(work, 'multiproc')
        os.mkdir(multiproc)
        # This run's configuration, with metrics on.
        with open(os.path.join(work, 'safejobs_metrics_configuration.py'), 'w') as f:
            f.write('import runpy\n'
                    f'_base = runpy.run_path({netbox.settings.configuration.__file__!r})\n'
                    'globals().update({k: v for k, v in _base.items() if k.isupper()})\n'
                    'METRICS_ENABLED = True\n')
        port = free_port()
        env = worker_env(
            PYTHONPATH=os.pathsep.join(filter(None, (work, os.environ.get('PYTHONPATH')))),
            NETBOX_CONFIGURATION='safejobs_metrics_configuration', PROMETHEUS_MULTIPROC_DIR=multiproc,
        )
        log = open(os.path.join(work, 'gunicorn.log'), 'w+')
        self.addCleanup(log.close)
        # gunicorn 26 (NetBox 4.7) opens a control socket unless told not to; gunicorn 23 (NetBox 4.2) has no such
        # option and refuses to start with it.
        usage = subprocess.run([sys.executable, '-m', 'gunicorn', '--help'], capture_output=True, text=True).stdout
        control_socket = ['--no-control-socket'] if '--no-control-socket' in usage else []
        server = subprocess.Popen(
            [sys.executable, '-m', 'gunicorn', '--workers', '2', '--bind', f'127.0.0.1:{port}', *control_socket,
             '--graceful-timeout', '1', 'netbox.wsgi'],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        self.addCleanup(stop_process_group, [server], sig=signal.SIGKILL)

        def get(path):
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=30) as response:
                    return response.status, response.read().decode()
            except (OSError, urllib.error.URLError):
                if server.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f'gunicorn exited: {log.read()[-3000:]}') from None
                return None, ''

        self.wait_for(lambda: get('/login/')[0] == 200, timeout=180, interval=0.5, message='gunicorn serving')
        for _ in range(6):
            self.assertEqual(get('/login/')[0], 200)
        # Each scrape is served by either worker process.
        for _ in range(4):
            status, text = get('/metrics')
            self.assertEqual(status, 200)
            found = families(text)
            self.assertLessEqual(set(GAUGES), set(found), text)
            self.assertEqual(value(found['netbox_safejobs_owed_pushes']), 1)
            self.assertEqual(value(found['netbox_safejobs_claimed_leases']), 0)
            self.assertEqual(value(found['netbox_safejobs_events_last_hour'], kind='dispatch_failed'), 1)
            # NetBox's own metrics, summed over both processes from the multiprocess files, are still served.
            requests = found['django_http_requests_total_by_method']
            self.assertGreaterEqual(value(requests, method='GET'), 7)
            self.assertNotIn('python_gc_objects_collected', found)


def without_clock_reading(text):
    """
    ``text`` without the clock skew it reports: every surface reads the clock anew, and a skew near zero comes out
    "in step" once and "0.1s behind" the next time.
    """
    return re.sub(r'\((?:in step with PostgreSQL to 0\.1s|\d+\.\ds (?:ahead of|behind) PostgreSQL)\)', '(...)', text)


class SurfacesTest(SafeJobsTransactionTestCase):
    """The same findings, in the same words, in the REST API and the UI panel; only for those allowed."""

    def setUp(self):
        super().setUp()
        user_model = get_user_model()
        self.admin = user_model.objects.create_user('health-admin', is_superuser=True)
        self.nobody = user_model.objects.create_user('health-nobody')

    def test_api_and_panel_say_what_the_command_says(self):
        expected = [without_clock_reading(f.message) for f in health.check().findings]
        self.client.force_login(self.admin)
        response = self.client.get('/api/plugins/safejobs/health/', HTTP_ACCEPT='application/json')
        self.assertEqual(response.status_code, 200, response.content)
        data = response.json()
        self.assertEqual([without_clock_reading(f['message']) for f in data['findings']], expected)
        self.assertEqual(data['status'], health.check().status)

        request = RequestFactory().get('/')
        request.user = self.admin
        html = Template('{% load safejobs_health %}{% safejobs_health_panel %}').render(Context({'request': request}))
        self.assertIn('id="safejobs-health"', html)
        html = without_clock_reading(html)
        for message in expected:
            # Escaped, with its `names` as code.
            self.assertIn(help_html(message), html)

        request.user = self.nobody
        html = Template('{% load safejobs_health %}{% safejobs_health_panel %}').render(Context({'request': request}))
        self.assertNotIn('safejobs-health', html)

    def test_api_refuses_users_without_permission(self):
        self.client.force_login(self.nobody)
        response = self.client.get('/api/plugins/safejobs/health/', HTTP_ACCEPT='application/json')
        self.assertEqual(response.status_code, 403)
        self.client.logout()
        response = self.client.get('/api/plugins/safejobs/health/', HTTP_ACCEPT='application/json')
        self.assertIn(response.status_code, (401, 403))


class PanelTest(TestCase):
    """The Health panel of the jobs in flight page: Markdown names as code, folded while nothing needs attention."""

    def render(self, *findings):
        from django.template.loader import render_to_string

        from netbox_safejobs.templatetags.safejobs_health import panel_context

        report = health.HealthReport()
        for check, level, message, fix in findings:
            report.add(check, level, message, fix=fix)
        return render_to_string('netbox_safejobs/inc/health_panel.html', panel_context(report))

    def test_names_are_code_and_the_rest_is_escaped(self):
        html = self.render(('settings', 'warning', 'worker_loop is off: `netbox safejobs_recover` must run <now>',
                            'Remove `worker_loop`.'))
        self.assertIn('<code>netbox safejobs_recover</code> must run &lt;now&gt;', html)
        self.assertIn('Remove <code>worker_loop</code>.', html)
        self.assertNotIn('`', html)

    def test_folded_when_every_check_is_ok(self):
        html = self.render(('database', 'ok', 'PostgreSQL answers', ''), ('redis', 'info', 'No persistence', ''))
        self.assertIn('data-status="ok"', html)
        self.assertIn('class="collapse" id="safejobs-health-findings"', html)
        self.assertIn('aria-expanded="false"', html)
        self.assertIn('Nothing needs attention.', html)

    def test_open_when_a_check_is_not_ok(self):
        for level in ('warning', 'error'):
            with self.subTest(level):
                html = self.render(('database', 'ok', 'PostgreSQL answers', ''), ('workers', level, 'No worker', ''))
                self.assertIn(f'data-status="{level}"', html)
                self.assertIn('class="collapse show" id="safejobs-health-findings"', html)
                self.assertIn('aria-expanded="true"', html)
                self.assertIn('Needs attention', html)


class BadInputTest(SafeJobsTransactionTestCase):

    def test_redis_unreachable(self):
        code, out, err = run_check_command(SAFEJOBS_REDIS_PORT=free_port())
        self.assertEqual(code, 2, out + err)
        self.assertIn('[ERROR] redis:', out)
        self.assertIn('does not answer', out)
        self.assertIn('fix: Start Redis', out)
        self.assertNotIn('Traceback', out + err)

    def test_database_unreachable(self):
        code, out, err = run_check_command('--format', 'json', SAFEJOBS_DB_NAME='no_such_database_safejobs')
        self.assertEqual(code, 2, out + err)
        data = json.loads(out)
        errors = [f for f in data['findings'] if f['level'] == 'error']
        self.assertEqual([f['check'] for f in errors], ['database'])
        self.assertIn('PostgreSQL does not answer', errors[0]['message'])
        self.assertNotIn('Traceback', out + err)

    def test_command_in_process_exits_with_the_status(self):
        with self.assertRaises(SystemExit) as raised, open(os.devnull, 'w') as sink:
            call_command('safejobs_check', stdout=sink)
        self.assertEqual(raised.exception.code, health.check().exit_code)


class MigrationsFindingTest(TestCase):
    """The database check compares the plugin's migrations on disk (read once) with those applied (read each time)."""

    def database_findings(self):
        return [f for f in health.check().findings if f.check == 'database']

    def test_all_applied(self):
        self.assertIn('ok', [f.level for f in self.database_findings()])

    def test_missing_and_unknown_migrations_are_named(self):
        latest = max(health.migrations_on_disk())
        with connection.cursor() as cursor:
            cursor.execute('DELETE FROM django_migrations WHERE app = %s AND name = %s', ['netbox_safejobs', latest])
            cursor.execute('INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, now())',
                           ['netbox_safejobs', '9999_from_a_newer_release'])
        findings = {f.level: f for f in self.database_findings()}
        self.assertEqual(findings['error'].data['migrations'], [latest])
        self.assertEqual(findings['warning'].data['migrations'], ['9999_from_a_newer_release'])
        self.assertNotIn('ok', findings)

"""
The short version of the race and fault harness (benchmarks/harness/) as an end-to-end check: real PostgreSQL,
a private Redis server it stops and restarts, real rqworker processes, stock NetBox and the plugin side by side.
"""

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from django.db import connection

from benchmarks import harness
from netbox_safejobs.testing.fixtures import stock_push_on_commit
from netbox_safejobs.testing.processes import RedisServer
from netbox_safejobs.testing.queues import override_rq_queues, queues_on

from .base import SafeJobsTransactionTestCase

# The scenarios whose stock failure this test shows beside the plugin's answer. Not here: cost and throughput (timings
# are for the benchmark), and db_terminated (workers' sessions killed every 0.5 s: about a minute; its short forms are
# the pg_blip test below and tests.test_guard's terminated connection).
SCENARIOS = 'race,redis_outage,crash_after_commit,deleted_rows,worker_killed,duplicate_push'


class WorkerPoolTest(SafeJobsTransactionTestCase):

    def test_a_worker_that_exits_is_restarted_and_counted(self):
        workdir = Path(tempfile.mkdtemp(prefix='safejobs-harness-test-'))
        redis = RedisServer(workdir)
        redis.start()
        try:
            with override_rq_queues(queues_on(redis.port)):
                ctx = harness.Context(redis=redis, workdir=workdir, workers=1,
                                      db_name=connection.settings_dict['NAME'], redis_db=0)
                pool = harness.WorkerPool(ctx, 'plugin', workdir / 'runs')
                try:
                    pool.wait_ready()
                    first = pool.processes[0]
                    os.killpg(first.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and pool.processes[0] is first:
                        time.sleep(0.2)
                    self.assertIsNot(pool.processes[0], first, 'the killed worker was not started again')
                    self.assertEqual(ctx.restarts, [('plugin', -signal.SIGKILL, ctx.restarts[0][2])])
                    self.assertIsNone(pool.processes[0].poll())
                finally:
                    pool.stop()
                # Stopping the pool is not an exit of a worker on its own: nothing restarted after stop().
                self.assertEqual(len(ctx.restarts), 1)
                self.assertIsNotNone(pool.processes[0].poll())
        finally:
            redis.stop()
            shutil.rmtree(workdir, ignore_errors=True)


class ShortHarnessTest(SafeJobsTransactionTestCase):

    def test_plugin_keeps_every_guarantee_where_stock_netbox_does_not(self):
        results, report = run_harness(['--short', '--scenarios', SCENARIOS, '--timeout', '300'], workers=2)
        self.assertEqual(harness.broken_guarantees(results), [], report)
        for scenario in SCENARIOS.split(','):
            plugin = results[scenario]['plugin']
            self.assertEqual(plugin['lost'], 0, f'{scenario}\n{report}')
        # The race: every committed job ran once, no rolled-back one ran.
        race = results['race']['plugin']
        self.assertEqual(race['completed'], race['committed'], report)
        self.assertEqual(race['runs'], race['committed'], report)
        # Where NetBox itself is still broken, the harness must show it (or it proves nothing).
        stock = {scenario: results[scenario]['stock'] for scenario in SCENARIOS.split(',')}
        self.assertGreater(stock['redis_outage']['lost'], 0, report)
        if stock_push_on_commit():
            # NetBox 4.2.6+ pushes after the commit: a process dying in between loses the job.
            self.assertGreater(stock['crash_after_commit']['lost'], 0, report)
        else:
            # NetBox <= 4.2.5 pushes inside the transaction: workers run jobs whose transaction then rolls back.
            self.assertGreater(stock['race']['ghost_rows'], 0, report)
        self.assertGreater(stock['deleted_rows']['resurrected'], 0, report)
        self.assertGreater(stock['worker_killed']['left_running'], 0, report)
        self.assertGreater(stock['duplicate_push']['duplicate_runs'], 0, report)
        self.assertEqual(results['deleted_rows']['plugin']['runs'], 0, report)
        self.assertEqual(results['worker_killed']['plugin']['errored'], results['worker_killed']['plugin']['committed'])


def run_harness(argv, workers):
    """The harness's scenarios for both modes, on its own Redis server; (results, markdown report)."""
    opts = harness.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix='safejobs-harness-test-'))
    redis = RedisServer(workdir)
    redis.start()
    try:
        with override_rq_queues(queues_on(redis.port)):
            ctx = harness.Context(redis=redis, workdir=workdir, workers=workers,
                                  db_name=connection.settings_dict['NAME'], redis_db=0)
            results = harness.run(opts, ctx)
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results, harness.markdown(results)


class CaughtFaultsHarnessTest(SafeJobsTransactionTestCase):
    """Two faults other tests cover by injection, for real: a reply lost after the commit, a caught enqueue error."""

    JOBS = 6

    def run_scenario(self, scenario):
        results, report = run_harness(['--scenarios', scenario, '--fault-jobs', str(self.JOBS), '--timeout', '120',
                                       '--no-recovery-scale'], workers=1)
        self.assertEqual(harness.broken_guarantees(results), [], report)
        return results[scenario], report

    def test_lost_claim_reply_runs_each_job_once(self):
        results, report = self.run_scenario('lost_claim_reply')
        n = self.JOBS
        # Every job's start lost its reply after the commit, in both modes (or the scenario measured nothing).
        for mode in harness.MODES:
            self.assertEqual(results[mode]['replies_cut'], n, report)
        # Stock NetBox: start() raises, terminate() finds the connection closed, the row stays running.
        self.assertEqual((results['stock']['left_running'], results['stock']['runs']), (n, 0), report)
        # The plugin: the retried claim recognises its own token and runs each job once.
        plugin = results['plugin']
        self.assertEqual((plugin['completed'], plugin['runs'], plugin['duplicate_runs']), (n, n, 0), report)
        self.assertEqual(plugin['events'], {'database_error': n}, report)
        self.assertEqual(plugin['dispatch_rows_left'], 0, report)  # the retried claim released its own lease

    def test_callers_that_catch_an_enqueue_error_keep_their_transaction(self):
        results, report = self.run_scenario('caller_catches')
        n = self.JOBS
        for mode in harness.MODES:
            caught = results[mode]
            self.assertEqual(caught['enqueue_errors_caught'], n, report)
            self.assertEqual((caught['callers_broken'], caught['saved_kept']), (0, n), report)
            self.assertEqual((caught['committed'], caught['completed'], caught['runs']), (2 * n, 2 * n, 2 * n), report)

    def test_database_blip_loses_no_job(self):
        """PostgreSQL unreachable for 4 s while a worker works through a queue: stock loses jobs, the plugin none."""
        results, report = run_harness(['--scenarios', 'pg_blip', '--fault-jobs', str(self.JOBS), '--db-blip-seconds',
                                       '4', '--timeout', '120', '--no-recovery-scale'], workers=1)
        self.assertEqual(harness.broken_guarantees(results), [], report)
        stock, plugin = results['pg_blip']['stock'], results['pg_blip']['plugin']
        self.assertGreater(stock['lost'], 0, report)
        self.assertEqual((plugin['completed'], plugin['runs'], plugin['duplicate_runs']), (self.JOBS, self.JOBS, 0),
                         report)
        self.assertEqual(plugin['rq_failed'], {}, report)



class ThroughputProfileHarnessTest(SafeJobsTransactionTestCase):
    """
    The throughput scenario's profile, short: real workers draining while this process enqueues, every statement of
    every process logged. What the plugin adds to a job, and what its workers' warm-up takes away, statement by
    statement.
    """

    JOBS = 20

    def test_plugin_adds_claim_and_release_and_its_horses_skip_the_catalogue_scan(self):
        from core.models.object_types import ObjectTypeManager

        results, report = run_harness(['--scenarios', 'throughput', '--throughput-jobs', str(self.JOBS), '--profile',
                                       '--timeout', '180', '--no-recovery-scale'], workers=1)
        stock, plugin = (results['throughput'][mode] for mode in harness.MODES)
        for outcome in (stock, plugin):
            self.assertGreater(outcome['throughput_jobs_per_s'], 0, report)
            self.assertGreater(outcome['horse_cpu_ms_per_job'], 0, report)
            self.assertGreater(outcome['commits_per_job'], 1, report)

        def per_job(outcome, key):
            return outcome['statements'].get(key, {}).get('statements', 0)

        # The plugin's work horse: one claim, one release, and NetBox's own two saves of the job.
        self.assertEqual(per_job(plugin, 'work horse | WITH core_job'), 1, report)
        self.assertEqual(per_job(plugin, 'work horse | DELETE netbox_safejobs_jobdispatch'), 1, report)
        self.assertEqual(per_job(plugin, 'work horse | UPDATE core_job'), 2, report)
        self.assertEqual(per_job(stock, 'work horse | UPDATE core_job'), 2, report)
        # The enqueue: the outbox row beside the Job row, and its stamp once pushed.
        self.assertEqual(per_job(plugin, 'enqueuing process | INSERT netbox_safejobs_jobdispatch'), 1, report)
        self.assertEqual(per_job(plugin, 'enqueuing process | UPDATE netbox_safejobs_jobdispatch'), 1, report)
        if hasattr(ObjectTypeManager, '_table_exists'):
            # NetBox asks the catalogue once per process, so once per stock work horse; never in the plugin's.
            self.assertEqual(per_job(stock, 'work horse | SELECT pg_catalog'), 1, report)
            self.assertEqual(per_job(plugin, 'work horse | SELECT pg_catalog'), 0, report)

"""
The fault explorer (benchmarks/harness/explorer.py) in its short form: a fixed set of seeds, each a schedule of random
work, operator actions and overlapping faults against real workers, must keep every invariant with the plugin; a
deliberately broken build must not. Its schedules replay from their seed.
"""

import shutil
import tempfile
from pathlib import Path

from django.db import connection
from django.test import SimpleTestCase

from benchmarks.harness import Context
from benchmarks.harness.explorer import Explorer, explore
from benchmarks.harness.proxies import RedisGate
from benchmarks.harness.schedules import FAULTS, generate
from netbox_safejobs.testing.processes import RedisServer
from netbox_safejobs.testing.queues import override_rq_queues, queues_on

from .base import SafeJobsTransactionTestCase

# The short form's seeds (each about a minute; the long run, scripts/dev bench explore, goes through hundreds).
SEEDS = (1, 2)
# A seed whose schedule catches the broken build below (a worker SIGKILLed; found by running it, docs/results.md).
MUTANT_SEEDS = (7,)
WINDOW = 15.0


class ScheduleTest(SimpleTestCase):

    def test_a_seed_always_gives_the_same_schedule(self):
        self.assertEqual(generate(11, window=WINDOW), generate(11, window=WINDOW))
        self.assertNotEqual(generate(11, window=WINDOW), generate(12, window=WINDOW))

    def test_a_schedule_replays_from_its_text(self):
        schedule = generate(5)
        self.assertEqual(type(schedule).from_json(schedule.to_json()), schedule)

    def test_keeping_drops_faults_only(self):
        schedule = next(s for s in map(generate, range(100)) if len(s.faults) >= 2)
        kept = schedule.keeping([1])
        self.assertEqual(kept.faults, [schedule.faults[1]])
        self.assertEqual([s for s in kept.steps if s.kind != 'fault'], [s for s in schedule.steps if s.kind != 'fault'])

    def test_every_family_of_faults_is_drawn(self):
        drawn = {step.action for seed in range(200) for step in generate(seed).faults}
        self.assertEqual(drawn, set(FAULTS))


class ExplorerTest(SafeJobsTransactionTestCase):

    def explore(self, seeds, mutant=None):
        workdir = Path(tempfile.mkdtemp(prefix='safejobs-explore-test-'))
        redis = RedisServer(workdir)
        redis.start()
        gate = RedisGate(('127.0.0.1', redis.port)).start()
        lines = []
        try:
            with override_rq_queues(queues_on(gate.port)):
                ctx = Context(redis=redis, workdir=workdir, workers=2, db_name=connection.settings_dict['NAME'],
                              redis_db=0)
                explorer = Explorer(ctx, gate, window=WINDOW, mutant=mutant)
                try:
                    outcomes = explore(explorer, seeds, ['plugin'], WINDOW,
                                       report=lambda *args, **kwargs: lines.append(' '.join(map(str, args))))
                finally:
                    explorer.close()
        finally:
            gate.stop()
            redis.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return outcomes, '\n'.join(lines)

    def test_the_plugin_keeps_every_invariant_on_the_short_form(self):
        outcomes, report = self.explore(SEEDS)
        self.assertEqual([o.violations for o in outcomes], [[] for _ in SEEDS], report)
        # The schedules did something: work committed, faults made.
        self.assertTrue(all(o.counts['jobs'] and o.counts['faults'] for o in outcomes), report)

    def test_a_build_without_the_liveness_check_is_caught(self):
        outcomes, report = self.explore(MUTANT_SEEDS, mutant='no_liveness')
        broken = {name for outcome in outcomes for name, _ in outcome.violations}
        self.assertIn('left_running', broken, report)

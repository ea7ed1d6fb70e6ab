"""
The fault explorer: random schedules of work, operator actions and overlapping faults (``schedules.generate``) run
against real rqworker processes, stock NetBox and the plugin alike, each checked on its whole history
(``explorer_checks``). A schedule that breaks an invariant is printed with its seed and replays with ``--seed``;
``--shrink`` cuts it down to the fewest faults that still break it.

    scripts/dev bench explore --schedules 20            # seeds 1-20, plugin and stock
    scripts/dev bench explore --seed 7 --modes plugin   # replay one schedule
    scripts/dev bench explore --seed 7 --faults 0,2     # replay it with only its faults 0 and 2
    scripts/dev bench explore --mutant no_existence_check --schedules 5 --modes plugin   # a broken build

The workers reach Redis through a gate of the explorer (``RedisGate``: cut, silent) and PostgreSQL through another
(``DatabaseGate``); this process, NetBox's web process as far as they can tell, reaches Redis through the same gate
and PostgreSQL directly.
"""

import argparse
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.mutants import MUTANT_VARIABLE, MUTANTS, write_sitecustomize
from netbox_safejobs.testing.fixtures import set_mode

from .core import HARNESS_TAG, MODES, PLUGIN_CONFIG, Context, WorkerPool, private_redis, use_redis
from .explorer_checks import INVARIANTS, check, wait_settled
from .explorer_faults import Faults
from .explorer_work import History, Workload
from .proxies import DatabaseGate, RedisGate, database_server
from .schedules import generate
from .support import cleanup

__all__ = (
    'EXPLORER_CONFIG',
    'Explorer',
    'Outcome',
    'main',
)

# The plugin's settings in the explorer: the harness's, with a liveness check that judges in 20 s instead of 60, so
# that an outage longer than stuck_after fits in a schedule of about a minute.
EXPLORER_CONFIG = {**PLUGIN_CONFIG, 'heartbeat_interval': 2, 'relay_interval': 1, 'stuck_after': 20}
# Quiet for longer than twice stuck_after before giving up on the work settling: after a database outage, a worker
# loop judges others' staleness only once it has worked stuck_after itself, and a lease is stale only once its
# heartbeat is stuck_after old.
SETTLE_IDLE = 2 * EXPLORER_CONFIG['stuck_after'] + 10


@dataclass
class Outcome:
    seed: int
    mode: str
    schedule: str
    violations: list
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self):
        return {'seed': self.seed, 'mode': self.mode, 'schedule': self.schedule, 'seconds': self.seconds,
                'violations': [list(v) for v in self.violations], 'counts': self.counts}


@dataclass
class Rig:
    """What one schedule runs on: shared with its faults."""
    ctx: Context
    mode: str
    runs_file: Path
    redis_gate: RedisGate
    pg_gate: DatabaseGate
    history: History
    pool: WorkerPool = None
    sigterm_ignored: list = field(default_factory=list)


class Explorer:
    """The gates, the workload and the runs of schedules, in one process; ``close()`` at the end."""

    def __init__(self, ctx, redis_gate, workers=2, window=30.0, mutant=None, settle=120.0):
        self.ctx, self.redis_gate, self.workers, self.window = ctx, redis_gate, workers, window
        self.mutant, self.settle = mutant, settle
        self.pg_gate = DatabaseGate(database_server()).start()
        self.workload = Workload()

    def close(self):
        self.workload.close()
        self.pg_gate.stop()

    @staticmethod
    def cleanup():
        """The harness's jobs and Redis, and what the webhooks of earlier schedules left in the outbox."""
        from netbox_safejobs.models import JobDispatch, RetryEvent

        cleanup()
        JobDispatch.objects.filter(job__isnull=True, name__contains=HARNESS_TAG).delete()
        RetryEvent.objects.filter(job_name__contains=HARNESS_TAG).delete()

    def env(self, mode, runs_file):
        env = self.ctx.env(mode, runs_file, extra_config=EXPLORER_CONFIG if mode == 'plugin' else None,
                           db_port=self.pg_gate.port)
        env['SAFEJOBS_REDIS_PORT'] = str(self.redis_gate.port)
        if self.mutant:
            directory = write_sitecustomize(self.ctx.workdir / 'mutant')
            env[MUTANT_VARIABLE] = self.mutant
            env['PYTHONPATH'] = os.pathsep.join([str(directory), env['PYTHONPATH']])
        return env

    def run(self, schedule, mode):
        """Run ``schedule`` in ``mode`` on fresh workers; its ``Outcome``."""
        started = time.monotonic()
        set_mode(mode)
        self.cleanup()
        runs_file = self.ctx.workdir / f'explore-{schedule.seed}-{mode}.runs'
        for path in (runs_file, runs_file.with_name(runs_file.name + '.ends')):
            path.unlink(missing_ok=True)
        history = History()
        rig = Rig(self.ctx, mode, runs_file, self.redis_gate, self.pg_gate, history)
        rig.pool = WorkerPool(self.ctx, mode, runs_file, count=self.workers, env=self.env(mode, runs_file), quiet=True)
        try:
            rig.pool.wait_ready()
            self.workload.start(mode, schedule.seed, history)
            self._play(schedule, rig)
            wait_settled(history, self.workload, rig.pool, timeout=self.settle, idle=SETTLE_IDLE)
            rig.sigterm_ignored += rig.pool.terminate()
            evidence = {}
            violations = check(history, runs_file, self.workload, rig.sigterm_ignored, evidence)
        finally:
            rig.pool.stop()
            self.redis_gate.up()
            self.pg_gate.up()
            if not self.ctx.redis.running():
                self.ctx.redis.start()
            set_mode('plugin')
        counts = {
            'jobs': len(history.committed) + len(history.rolled_back), 'rolled_back': len(history.rolled_back),
            'webhooks': len(history.webhooks), 'scripts': history.scripts_accepted,
            'scripts_refused': history.scripts_refused, 'faults': len(history.faults),
            'operator': dict(history.operator), 'fault_log': history.faults, 'evidence': evidence,
        }
        return Outcome(schedule.seed, mode, schedule.describe(), violations, counts,
                       round(time.monotonic() - started, 1))

    def _play(self, schedule, rig):
        """The schedule's steps at their times: work and the operator in a thread each, every fault in its own."""
        faults = Faults(rig)
        start = time.monotonic()
        running = []

        def play(steps):
            for number, step in steps:
                time.sleep(max(0.0, start + step.at - time.monotonic()))
                if step.kind == 'fault':
                    running.append(threading.Thread(target=faults.run, args=(step, start), daemon=True))
                    running[-1].start()
                else:
                    self.workload.do(step, number)

        numbered = list(enumerate(schedule.steps))
        threads = [threading.Thread(target=play, args=([(n, s) for n, s in numbered if s.kind == kind],))
                   for kind in ('work', 'operator', 'fault')]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Every fault healed: the longest outlasts the window.
        for thread in running:
            thread.join()

    def shrink(self, schedule, mode, invariant, report=print):
        """The fewest faults of ``schedule`` that still break ``invariant``, dropping one fault at a time."""
        kept = list(range(len(schedule.faults)))
        for index in list(kept):
            trial = [i for i in kept if i != index]
            outcome = self.run(schedule.keeping(trial), mode)
            still = any(name == invariant for name, _ in outcome.violations)
            report(f'  shrink: without fault {index} ({schedule.faults[index].action}): '
                   f'{"still broken" if still else "holds"}')
            if still:
                kept = trial
        return kept


def explore(explorer, seeds, modes, window, faults=None, shrink=False, report=print):
    """Run the schedule of every seed in every mode; the outcomes."""
    outcomes = []
    for seed in seeds:
        schedule = generate(seed, window=window, stuck_after=EXPLORER_CONFIG['stuck_after'])
        if faults is not None:
            schedule = schedule.keeping(faults)
        for mode in modes:
            outcome = explorer.run(schedule, mode)
            outcomes.append(outcome)
            verdict = '; '.join(f'{name}: {detail}' for name, detail in outcome.violations) or 'every invariant held'
            report(f'[{mode}] {outcome.schedule} ({outcome.seconds} s): {verdict}', flush=True)
            if outcome.violations:
                report(f'  faults as they ran: {outcome.counts["fault_log"]}\n  evidence: '
                       + json.dumps(outcome.counts['evidence'], default=str, indent=1), flush=True)
            if outcome.violations and mode == 'plugin' and shrink:
                kept = explorer.shrink(schedule, mode, outcome.violations[0][0], report=report)
                report(f'  smallest: --seed {seed} --faults {",".join(map(str, kept)) or "none"}')
    return outcomes


def summary(outcomes):
    """Per mode: schedules, faults, jobs, webhooks, and schedules that broke each invariant."""
    result = {}
    for mode in MODES:
        mine = [o for o in outcomes if o.mode == mode]
        if not mine:
            continue
        broken = Counter(name for o in mine for name in {n for n, _ in o.violations})
        result[mode] = {
            'schedules': len(mine), 'faults': sum(o.counts['faults'] for o in mine),
            'jobs': sum(o.counts['jobs'] for o in mine), 'webhooks': sum(o.counts['webhooks'] for o in mine),
            'script_runs': sum(o.counts['scripts'] for o in mine),
            'script_runs_refused': sum(o.counts.get('scripts_refused', 0) for o in mine),
            'faults_by_kind': dict(sorted(Counter(f[0] for o in mine for f in o.counts['fault_log']).items())),
            'operator_actions': sum(count for o in mine for what, count in o.counts['operator'].items()
                                    if '(' not in what and ':' not in what),
            'schedules_with_violations': sum(1 for o in mine if o.violations),
            'broken': {name: broken[name] for name in INVARIANTS if broken[name]},
        }
    return result


def parse_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--schedules', type=int, default=10, help='how many seeds, from --first-seed (default 10)')
    parser.add_argument('--first-seed', type=int, default=1)
    parser.add_argument('--seed', type=int, help='replay this one seed')
    parser.add_argument('--faults', help='with --seed: keep only these faults of its schedule (indices, 0,2)')
    parser.add_argument('--modes', default='plugin,stock', help='plugin, stock or both (default both)')
    parser.add_argument('--window', type=float, default=30.0, help='seconds of work and faults per schedule')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--mutant', choices=sorted(MUTANTS), help='run a deliberately broken build of the plugin')
    parser.add_argument('--shrink', action='store_true', help='cut each broken plugin schedule to its fewest faults')
    parser.add_argument('--json', help='write every outcome and the summary to this file')
    opts = parser.parse_args(argv)
    opts.modes = [m.strip() for m in opts.modes.split(',') if m.strip()]
    if set(opts.modes) - set(MODES):
        parser.error(f'--modes: {", ".join(sorted(set(opts.modes) - set(MODES)))} is not one of {", ".join(MODES)}')
    if opts.faults is not None and opts.seed is None:
        parser.error('--faults needs --seed')
    try:
        opts.faults = None if opts.faults is None else [int(i) for i in opts.faults.split(',') if i.strip()]
    except ValueError:
        parser.error(f'--faults: {opts.faults!r} is not a comma-separated list of fault indices')
    first = opts.first_seed
    opts.seeds = [opts.seed] if opts.seed is not None else list(range(first, first + opts.schedules))
    return opts


def main(argv=None, prog=None):
    opts = parse_args(argv, prog)
    workdir, redis = private_redis('safejobs-explore-')
    gate = RedisGate(('127.0.0.1', redis.port)).start()
    # This process reaches Redis through the gate too.
    use_redis(gate.port)
    import django

    django.setup()
    from django.db import connection

    ctx = Context(redis=redis, workdir=workdir, workers=opts.workers, db_name=connection.settings_dict['NAME'],
                  redis_db=0)
    explorer = Explorer(ctx, gate, workers=opts.workers, window=opts.window, mutant=opts.mutant)
    try:
        outcomes = explore(explorer, opts.seeds, opts.modes, opts.window, faults=opts.faults, shrink=opts.shrink)
    finally:
        explorer.close()
        gate.stop()
        redis.stop()
    totals = summary(outcomes)
    print(json.dumps(totals, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps({'summary': totals, 'outcomes': [o.as_dict() for o in outcomes]},
                                              indent=2, default=str))
    broken = [o for o in outcomes if o.mode == 'plugin' and o.violations]
    for outcome in broken:
        print(f'PLUGIN INVARIANT BROKEN: {outcome.schedule}: {outcome.violations}\n'
              f'  replay: scripts/dev bench explore --seed {outcome.seed} --modes plugin')
    return 1 if broken else 0

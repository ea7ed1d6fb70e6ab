"""
The command line: its options (``--help`` prints the package's docstring), the run of the chosen scenarios for both
modes or in interleaved pairs, and the report.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from netbox_safejobs.testing.fixtures import set_mode

from .core import MODES, SCENARIOS, Context, private_redis, use_redis
from .report import PAIRED, broken_guarantees, chart, markdown
from .support import cleanup
from .throughput import recovery_at_scale

__all__ = (
    'main',
    'parse_args',
    'run',
    'run_pairs',
)


def run(opts, ctx):
    """Run the selected scenarios for both modes; returns {scenario: {mode: outcome}}."""
    results = {}
    cleanup()
    for scenario in opts.scenarios:
        results[scenario] = {}
        if scenario in PAIRED and opts.pairs > 1 and not opts.profile:
            results[scenario] = run_pairs(opts, ctx, scenario)
            continue
        for mode in MODES:
            set_mode(mode)
            runs_file = ctx.workdir / f'{scenario}-{mode}.runs'
            runs_file.unlink(missing_ok=True)
            started, restarts = time.monotonic(), len(ctx.restarts)
            print(f'--- {scenario} / {mode}', flush=True)
            try:
                outcome = SCENARIOS[scenario](ctx, mode, opts, runs_file)
            finally:
                set_mode('plugin')
                if not ctx.redis.running():
                    ctx.redis.start()
                cleanup()
            outcome['worker_restarts'] = len(ctx.restarts) - restarts
            outcome['seconds'] = round(time.monotonic() - started, 1)
            results[scenario][mode] = outcome
            print(json.dumps(outcome, default=str), flush=True)
    if opts.recovery_scale:
        results['recovery_at_scale'] = {'plugin': recovery_at_scale(ctx, opts)}
    return results


def run_pairs(opts, ctx, scenario):
    """
    A scenario of ``PAIRED`` ``opts.pairs`` times, stock and plugin one after the other, the order alternating from
    pair to pair so that neither mode always runs on a warmer (or busier) machine. Returns the median of each figure
    per mode, and the plugin/stock ratio of every pair under ``'pairs'``.
    """
    rows = PAIRED[scenario]
    pairs = []
    for number in range(opts.pairs):
        pair = {}
        for mode in (MODES if number % 2 == 0 else tuple(reversed(MODES))):
            set_mode(mode)
            runs_file = ctx.workdir / f'{scenario}-{number}-{mode}.runs'
            runs_file.unlink(missing_ok=True)
            print(f'--- {scenario} pair {number + 1}/{opts.pairs} / {mode}', flush=True)
            try:
                pair[mode] = SCENARIOS[scenario](ctx, mode, opts, runs_file)
            finally:
                set_mode('plugin')
                cleanup()
            print(json.dumps(pair[mode]), flush=True)
        pairs.append(pair)
    result = {mode: {key: round(statistics.median(p[mode][key] for p in pairs), 3) for key, _ in rows
                     if all(p[mode].get(key) is not None for p in pairs)}
              for mode in MODES}
    result['pairs'] = [{key: round(p['plugin'][key] / p['stock'][key], 3) for key, _ in rows
                        if p['stock'].get(key) and p['plugin'].get(key) is not None}
                       for p in pairs]
    return result


def parse_args(argv=None, prog=None):
    from . import __doc__ as description

    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--short', action='store_true', help='a few hundred jobs, each fault once')
    parser.add_argument('--scenarios', default=','.join(SCENARIOS), help=f'comma-separated, of {", ".join(SCENARIOS)}')
    parser.add_argument('--jobs', type=int, default=10000, help='jobs of the race scenario (default 10,000)')
    parser.add_argument('--workers', type=int, default=2, help='rqworker processes per mode (default 2)')
    parser.add_argument('--threads', type=int, default=8, help='enqueuing threads of the race scenario')
    parser.add_argument('--hold', type=float, default=0.02, help='seconds a transaction stays open after the enqueue')
    parser.add_argument('--rollback-share', type=float, default=0.1, help='share of transactions rolled back')
    parser.add_argument('--fault-jobs', type=int, default=100, help='jobs per fault scenario')
    parser.add_argument('--crashes', type=int, default=4, help='processes killed between commit and push')
    parser.add_argument('--outage-seconds', type=int, default=5,
                        help='Redis outage: seconds up, then down, then up again while enqueuing')
    parser.add_argument('--chain-cycles', type=int, default=24,
                        help='worker restarts of the chains scenario, one per simulated hour (default 24; 8 with '
                             '--short)')
    parser.add_argument('--outage-jobs', type=int, default=100,
                        help='jobs enqueued across the five outages of redis_outages (default 100)')
    parser.add_argument('--timeout', type=int, default=900, help='seconds to wait for a scenario to settle')
    parser.add_argument('--db-blip-seconds', type=float, default=6, help='PostgreSQL unreachable in pg_blip')
    parser.add_argument('--db-outage-seconds', type=float, default=75,
                        help='PostgreSQL unreachable in pg_outage (longer than stuck_after, 60 s by default)')
    parser.add_argument('--long-job-seconds', type=float, default=100, help='the running job of pg_outage')
    parser.add_argument('--no-recovery-scale', dest='recovery_scale', action='store_false',
                        help='skip the recovery pass timing with 1,000,000 core_job rows')
    parser.add_argument('--core-job-rows', type=int, default=1_000_000)
    parser.add_argument('--owed', type=int, default=1000)
    parser.add_argument('--throughput-jobs', type=int, default=None,
                        help='jobs of the throughput scenario and of the throughput part of the cost scenario '
                             '(default 1,000; 100 with --short)')
    parser.add_argument('--pairs', type=int, default=1,
                        help='run the cost and throughput scenarios this many times, stock and plugin '
                             'interleaved, and report the median, the spread and the ratio of every pair')
    parser.add_argument('--profile', action='store_true',
                        help='throughput scenario: log every statement of every process (one run per mode, not '
                             'timed) and print the per-job profile')
    parser.add_argument('--cprofile', action='store_true',
                        help='with --profile: each work horse profiles itself with cProfile; the merged top '
                             'functions per job go into the JSON results')
    parser.add_argument('--json', help='write the results as JSON to this file')
    parser.add_argument('--markdown', help='write the result tables as Markdown to this file')
    parser.add_argument('--chart', help='write the cost chart (PNG) to this file')
    opts = parser.parse_args(argv)
    if opts.short:
        opts.jobs, opts.fault_jobs, opts.crashes, opts.recovery_scale = 300, 20, 1, False
        opts.chain_cycles = min(opts.chain_cycles, 8)
    opts.cost_jobs = 100 if opts.short else 1000
    opts.throughput_jobs = opts.throughput_jobs or (100 if opts.short else 1000)
    opts.latency_jobs = 30 if opts.short else 200
    opts.scenarios = [s.strip() for s in opts.scenarios.split(',') if s.strip()]
    unknown = set(opts.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f'unknown scenario(s): {", ".join(sorted(unknown))}')
    return opts


def main(argv=None, prog=None):
    opts = parse_args(argv, prog)
    workdir, redis = private_redis('safejobs-harness-')
    # The harness process itself must use the private Redis too.
    use_redis(redis.port)
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    started = time.time()
    try:
        ctx = Context(redis=redis, workdir=workdir, workers=opts.workers, db_name=connection.settings_dict['NAME'],
                      redis_db=0)
        results = run(opts, ctx)
    finally:
        redis.stop()
    header = (f'NetBox {settings.RELEASE.version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, '
              f'{os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30:.0f} GiB; '
              f'{opts.workers} workers; {time.strftime("%Y-%m-%d", time.gmtime(started))}; '
              f'{round(time.time() - started)} s')
    text = markdown(results)
    print(f'\n{header}\n\n{text}')
    if opts.markdown:
        Path(opts.markdown).write_text(f'{header}\n\n{text}')
    if opts.json:
        Path(opts.json).write_text(json.dumps({'header': header, 'results': results}, indent=2, default=str))
    if opts.chart:
        chart(results, opts.chart)
    broken = broken_guarantees(results)
    if broken:
        print('PLUGIN GUARANTEE BROKEN:\n  ' + '\n  '.join(broken))
        print(f'worker logs and runs files kept in {workdir}')
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print('plugin guarantees held in every scenario')
    return 0

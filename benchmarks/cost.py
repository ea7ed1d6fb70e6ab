"""
What netbox-safejobs costs on the two hot paths, measured against stock NetBox in the same run.

    scripts/dev bench cost [--jobs 200] [--rounds 5]

For each round, stock NetBox (patches uninstalled) and the plugin (patches installed) are measured one after the
other, in alternating order, in this process, against the development database and Redis:

- enqueue + commit: ``TrivialJob.enqueue()`` inside ``transaction.atomic()``, timed until the block has committed
  and the on-commit push to Redis has returned;
- worker side: ``TrivialJob.handle(job)`` called on a pickled copy of the Job, as the worker receives it, timed
  and its SQL queries counted.

Prints p50/p99 per path and mode, the plugin/stock ratios, and the extra queries per job. Cleans up after itself.
"""

import argparse
import os
import pickle
import statistics
import sys
import time

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--jobs', type=int, default=200, help='jobs per mode and round')
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args(argv)

    import django

    django.setup()
    from core.models import Job
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django_rq import get_connection
    from rq.job import Job as RQJob

    from benchmarks.harness import percentile
    from benchmarks.runners import TrivialJob
    from netbox_safejobs import patches
    from netbox_safejobs.models import JobDispatch
    from netbox_safejobs.testing.fixtures import set_mode

    redis = get_connection('default')
    results = {mode: {'enqueue': [], 'handle': [], 'queries': []} for mode in ('stock', 'plugin')}
    # p50 of each round, per mode and path: the spread of the plugin/stock ratio over the rounds.
    rounds = {mode: {'enqueue': [], 'handle': []} for mode in ('stock', 'plugin')}
    created = []

    def one_round(mode):
        set_mode(mode, worker=False)
        marks = {key: len(results[mode][key]) for key in ('enqueue', 'handle')}
        jobs = []
        for _ in range(args.jobs):
            start = time.perf_counter()
            with transaction.atomic():
                job = TrivialJob.enqueue(queue_name='low')
            results[mode]['enqueue'].append(time.perf_counter() - start)
            jobs.append(job)
        created.extend(j.job_id for j in jobs)
        for job in jobs:
            copy = pickle.loads(pickle.dumps(job))
            with CaptureQueriesContext(connection) as ctx:
                start = time.perf_counter()
                TrivialJob.handle(copy)
                elapsed = time.perf_counter() - start
            results[mode]['handle'].append(elapsed)
            results[mode]['queries'].append(len(ctx.captured_queries))
        for key, mark in marks.items():
            rounds[mode][key].append(percentile(results[mode][key][mark:], .5))

    try:
        # Warm-up: first queries, first Redis connection, imports.
        for mode in ('stock', 'plugin'):
            set_mode(mode, worker=False)
            with transaction.atomic():
                job = TrivialJob.enqueue(queue_name='low')
            created.append(job.job_id)
            TrivialJob.handle(pickle.loads(pickle.dumps(job)))
        for mode in results:
            for key in results[mode]:
                results[mode][key].clear()
        for r in range(args.rounds):
            for mode in (('stock', 'plugin') if r % 2 == 0 else ('plugin', 'stock')):
                one_round(mode)
    finally:
        patches.uninstall()
        patches.install()
        Job.objects.filter(job_id__in=created).delete()
        JobDispatch.objects.filter(job_uuid__in=created).delete()
        pipe = redis.pipeline(transaction=False)
        for job_uuid in created:
            pipe.lrem('rq:queue:low', 0, str(job_uuid))
            pipe.delete(RQJob.key_for(str(job_uuid)))
        pipe.execute()

    import django as dj
    from django.conf import settings

    n = args.jobs * args.rounds
    print(f'netbox-safejobs cost benchmark: NetBox {settings.RELEASE.version}, Django {dj.get_version()}, '
          f'Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {n} jobs per mode ({args.rounds} rounds)')
    print(f'{"path":<28}{"stock p50":>11}{"plugin p50":>12}{"ratio":>8}{"stock p99":>11}{"plugin p99":>12}')
    for key, label in (('enqueue', 'enqueue + commit (ms)'), ('handle', 'worker handle() (ms)')):
        s50, p50 = percentile(results['stock'][key], .5) * 1e3, percentile(results['plugin'][key], .5) * 1e3
        s99, p99 = percentile(results['stock'][key], .99) * 1e3, percentile(results['plugin'][key], .99) * 1e3
        print(f'{label:<28}{s50:>11.3f}{p50:>12.3f}{p50 / s50:>8.3f}{s99:>11.3f}{p99:>12.3f}')
    for key, label in (('enqueue', 'enqueue + commit'), ('handle', 'worker handle()')):
        ratios = sorted(p / s for p, s in zip(rounds['plugin'][key], rounds['stock'][key], strict=True))
        print(f'{label + " ratio per round":<28} min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  '
              f'max {ratios[-1]:.3f}  ({len(ratios)} interleaved pairs)')
    sq, pq = statistics.median(results['stock']['queries']), statistics.median(results['plugin']['queries'])
    print(f'{"queries per handle()":<28}{sq:>11.0f}{pq:>12.0f}{"":>8}  extra queries per job: {pq - sq:.0f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

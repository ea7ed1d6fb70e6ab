"""
Cost of one scrape of the plugin's gauges on ``/metrics`` (``metrics.BacklogCollector``) with 100,000 jobs in flight
and 200,000 retry events in the tables.

    scripts/dev bench health_gauges
    scripts/dev bench health_gauges --dispatches 100000 --events 200000 --repeat 50 --keep
    scripts/dev bench health_gauges --mix sent=85,claimed=5,owed=5,written=3,stuck=2 --explain

The rows are those of ``ui_scale.py`` (the same marked jobs in flight: claimed, sent, owed, written and stuck, with
three workers' heartbeats, one of them dead; the same events, spread over 90 days) and are removed afterwards unless
--keep is given. ``--mix`` sets the share of each state in percent (default: ui_scale's, 60 % of the rows claimed by
live workers); rows kept from a run with another mix are replaced. Prints the queries one scrape makes, the p50 and
p95 of a scrape in milliseconds with the load average, the CPU time of a scrape in this process and in PostgreSQL
(when the database runs on this host), and the gauges; with --explain, the plan of each query (EXPLAIN ANALYZE,
BUFFERS).
"""

import argparse
import os
import sys
import time

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STATES = ('claimed', 'sent', 'owed', 'written', 'stuck')


def parse_mix(text):
    mix = []
    for part in text.split(','):
        state, _, share = part.partition('=')
        if state.strip() not in STATES or not share.strip().isdigit():
            raise argparse.ArgumentTypeError(f'{part!r}: expected state=percent, states {", ".join(STATES)}')
        mix.append((state.strip(), int(share)))
    if sum(share for _state, share in mix) != 100:
        raise argparse.ArgumentTypeError('the shares must add up to 100')
    return tuple(mix)


def expected_counts(mix, count):
    """Rows per state that ``ui_scale.insert_dispatches`` writes for ``mix`` (by ``g % 100``, g = 1..count)."""
    counts = dict.fromkeys(STATES, 0)
    for g in range(1, count + 1):
        low = 0
        for state, share in mix:
            if low <= g % 100 < low + share:
                counts[state] += 1
                break
            low += share
    return counts


def kept_rows_match(mix, count):
    from django.db.models import Q

    from benchmarks import ui_scale
    from netbox_safejobs.models import JobDispatch

    rows = JobDispatch.objects.filter(job__name__startswith=f'{ui_scale.MARKER} ')
    expected = expected_counts(mix, count)
    return rows.count() == count and rows.filter(claimed__isnull=False).count() == (
        expected['claimed'] + expected['stuck']
    ) and rows.filter(Q(owed__isnull=False)).count() == expected['owed']


def _backend_cpu_seconds(pid):
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def cpu_per_scrape(connection, scrape, repeat):
    """
    CPU milliseconds of one scrape, in this process and in its PostgreSQL backend (read from /proc: only with the
    database on this host); None otherwise. Unlike the elapsed time, it does not grow while other work holds the CPUs.
    """
    with connection.cursor() as cursor:
        cursor.execute('SELECT pg_backend_pid()')
        pid = cursor.fetchone()[0]
    try:
        backend = _backend_cpu_seconds(pid)
    except OSError:
        return None
    started = time.process_time()
    for _ in range(repeat):
        scrape()
    return ((time.process_time() - started) * 1000 / repeat, (_backend_cpu_seconds(pid) - backend) * 1000 / repeat)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dispatches', type=int, default=100_000)
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--repeat', type=int, default=50)
    parser.add_argument('--mix', type=parse_mix, help='state=percent,... (default: ui_scale.DISPATCH_MIX)')
    parser.add_argument('--explain', action='store_true', help='print EXPLAIN (ANALYZE, BUFFERS) of each query')
    parser.add_argument('--keep', action='store_true', help='keep the rows for a later run')
    opts = parser.parse_args(argv)

    from benchmarks import ui_scale

    ui_scale.setup_django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from netbox_safejobs.metrics import BacklogCollector

    mix = opts.mix or ui_scale.DISPATCH_MIX
    ui_scale.DISPATCH_MIX = mix
    try:
        if not kept_rows_match(mix, opts.dispatches):
            ui_scale.cleanup_dispatches()
        total = ui_scale.prepare_dispatches(opts.dispatches)
        ui_scale.prepare(opts.events)
        collector = BacklogCollector()

        def scrape():
            return list(collector.collect())

        with CaptureQueriesContext(connection) as queries:
            families = scrape()
        print(f'{total:,} dispatch rows ({", ".join(f"{state} {share} %" for state, share in mix)}); '
              f'one scrape makes {len(queries)} queries:')
        for query in queries:
            print(f'  {query["time"]} s  {query["sql"][:150]}…')
        if opts.explain:
            with connection.cursor() as cursor:
                for query in queries:
                    cursor.execute(f'EXPLAIN (ANALYZE, BUFFERS) {query["sql"]}')
                    print('\n'.join(row[0] for row in cursor.fetchall()), end='\n\n')
        load = ', '.join(f'{value:.2f}' for value in os.getloadavg())
        p50, p95 = ui_scale.measure_call(scrape, opts.repeat, warmup=3)
        print(f'scrape of the gauges, {opts.repeat} timed: p50 {p50:.2f} ms, p95 {p95:.2f} ms '
              f'(load average {load}; {os.cpu_count()} CPUs)')
        cpu = cpu_per_scrape(connection, scrape, opts.repeat)
        if cpu:
            print(f'CPU time per scrape, mean of {opts.repeat}: this process {cpu[0]:.2f} ms, its PostgreSQL backend '
                  f'{cpu[1]:.2f} ms')
        for family in families:
            for sample in family.samples:
                labels = ','.join(f'{k}="{v}"' for k, v in sample.labels.items())
                name = f'{sample.name}{{{labels}}}' if labels else sample.name
                print(f'  {name} {sample.value:g}')
    finally:
        if not opts.keep:
            ui_scale.cleanup_dispatches()
            ui_scale.cleanup()


if __name__ == '__main__':
    main()

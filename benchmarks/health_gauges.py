"""
Cost of one scrape of the plugin's gauges on ``/metrics`` (``metrics.BacklogCollector``) with 100,000 jobs in flight
and 200,000 retry events in the tables.

    scripts/dev bench health_gauges
    scripts/dev bench health_gauges --dispatches 100000 --events 200000 --repeat 50 --keep

The rows are those of ``ui_scale.py`` (the same marked jobs in flight: claimed, sent, owed, written and stuck, with
three workers' heartbeats, one of them dead; the same events, spread over 90 days) and are removed afterwards unless
--keep is given. Prints the queries one scrape makes, the p50 and p95 of a scrape in milliseconds, and the gauges.
"""

import argparse
import os
import sys

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dispatches', type=int, default=100_000)
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--repeat', type=int, default=50)
    parser.add_argument('--keep', action='store_true', help='keep the rows for a later run')
    opts = parser.parse_args(argv)

    from benchmarks import ui_scale

    ui_scale.setup_django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from netbox_safejobs.metrics import BacklogCollector

    try:
        total = ui_scale.prepare_dispatches(opts.dispatches)
        ui_scale.prepare(opts.events)
        collector = BacklogCollector()

        def scrape():
            return list(collector.collect())

        with CaptureQueriesContext(connection) as queries:
            families = scrape()
        print(f'{total:,} dispatch rows; one scrape makes {len(queries)} queries:')
        for query in queries:
            print(f'  {query["time"]} s  {query["sql"][:150]}…')
        p50, p95 = ui_scale.measure_call(scrape, opts.repeat, warmup=3)
        print(f'scrape of the gauges, {opts.repeat} timed: p50 {p50:.2f} ms, p95 {p95:.2f} ms')
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

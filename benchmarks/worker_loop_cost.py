"""
What the loop every rqworker runs beside its work costs while the worker is idle: statements and time per minute.

    scripts/dev bench worker_loop_cost [--minutes 1]

Runs the loop's own ``tick()`` in this process, against the development database and Redis, as a worker with the
default settings runs it: every ``relay_interval`` seconds the relay (a Redis GET of the marker key, one indexed query
for owed pushes), and every ``heartbeat_interval`` seconds the heartbeat and the two liveness queries. The ticks are
not spaced out in time (only counted), so the figures are per minute of a worker's life, not per minute of this run.
A job that runs longer than ``heartbeat_interval`` adds one UPDATE of its lease per ``heartbeat_interval``.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--minutes', type=int, default=1, help='minutes of a worker life to simulate')
    args = parser.parse_args(argv)

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from netbox_safejobs import workers
    from netbox_safejobs.models import WorkerHeartbeat
    from netbox_safejobs.settings import get_settings
    from netbox_safejobs.worker_loop import WorkerLoop

    settings = get_settings()
    identity = workers.set_current('benchmark-worker')
    loop = WorkerLoop(identity, settings)
    ticks = int(args.minutes * 60 / settings.relay_interval)
    beat_every = max(1, round(settings.heartbeat_interval / settings.relay_interval))
    durations, queries = [], 0
    try:
        loop.tick(True)  # warm-up: connections, the Redis marker
        with CaptureQueriesContext(connection) as ctx:
            for i in range(ticks):
                start = time.perf_counter()
                loop.tick(i % beat_every == 0)
                durations.append(time.perf_counter() - start)
            queries = len(ctx.captured_queries)
    finally:
        WorkerHeartbeat.objects.filter(id=identity.id).delete()
    per_minute = 1 / args.minutes
    print(f'worker loop, idle, default settings (relay every {settings.relay_interval}s, heartbeat every '
          f'{settings.heartbeat_interval}s): {ticks} ticks for {args.minutes} minute(s) of a worker')
    print(f'  SQL statements per worker per minute: {queries * per_minute:.0f}')
    print(f'  Redis GETs per worker per minute:     {ticks * per_minute:.0f} (one per Redis of the RQ queues)')
    print(f'  time per tick: p50 {statistics.median(durations) * 1e3:.2f} ms, max {max(durations) * 1e3:.2f} ms; '
          f'busy {sum(durations) * per_minute * 1e3:.0f} ms per worker per minute')
    return 0


if __name__ == '__main__':
    sys.exit(main())

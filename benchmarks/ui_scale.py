"""
Scale benchmark of the retry event UI: the list page, the REST API list and the panel on NetBox's Job page with
1,000,000 retry events in the table.

    scripts/dev bench ui_scale                      # 1,000,000 events, 15 timed requests per case
    scripts/dev bench ui_scale --events 200000 --repeat 30 --keep

Requests go through Django's test client in this process: the whole NetBox middleware and view stack (login,
permissions, filters, templates, serializers) and real PostgreSQL, without the network or a web server in front.
Prints the p50 and p95 of each case, in milliseconds.

The events are inserted with one INSERT ... SELECT generate_series (marked worker_host = 'ui-scale-bench') and
removed afterwards unless --keep is given (a later run with --keep reuses them). The database is the one the
environment names (``scripts/dev bench`` uses the development database).
"""

import argparse
import hashlib
import os
import statistics
import sys
import time
import uuid

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')

MARKER = 'ui-scale-bench'
USERNAME = 'ui-scale-bench'
PANEL_EVENTS = 25

# kind -> share of the events (a realistic mix: mostly retries, few give-ups)
KIND_MIX = (
    ('retry', 60), ('found_after_retry', 20), ('recovered', 6), ('duplicate_skipped', 5), ('database_error', 3),
    ('gave_up', 3), ('dispatch_failed', 2), ('stuck_errored', 1),
)


def setup_django():
    import django

    django.setup()


def insert_events(count):
    """Insert ``count`` marked events: ~5 per job UUID, spread over 90 days, kinds in KIND_MIX proportions."""
    from django.db import connection, transaction

    from netbox_safejobs.models import RetryEvent

    table = connection.ops.quote_name(RetryEvent._meta.db_table)
    cases = []
    bound = 0
    for kind, share in KIND_MIX:
        bound += share
        cases.append(f"WHEN (g %% 100) < {bound} THEN '{kind}'")
    sql = f"""
        INSERT INTO {table} (time, job_id, job_uuid, job_name, runner, queue, kind, attempt, delay, detail,
                             worker_host, worker_pid)
        SELECT now() - (g * interval '7776 milliseconds'),
               NULL,
               md5('job' || (g / 5))::uuid,
               'bench job ' || (g / 5),
               'netbox.jobs.AsyncViewJob',
               (ARRAY['high', 'default', 'low'])[1 + g %% 3],
               CASE {' '.join(cases)} END,
               1 + g %% 5,
               0.5 * (1 + g %% 5),
               'Job row not found (not committed yet, rolled back or deleted); looking again.',
               %s,
               1000 + g %% 64
        FROM generate_series(1, %s) AS g
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [MARKER, count])
    # What autovacuum does shortly after a bulk insert on a live system: statistics and the visibility map.
    with connection.cursor() as cursor:
        cursor.execute(f'VACUUM (ANALYZE) {table}')


def prepare(count):
    """Make sure ``count`` marked events exist; a Job with PANEL_EVENTS events of its own; a superuser."""
    from core.models import Job
    from django.db import connection
    from users.models import User

    from netbox_safejobs.models import RetryEvent

    existing = RetryEvent.objects.filter(worker_host=MARKER, job__isnull=True).count()
    if existing != count:
        if existing:
            cleanup()
        started = time.monotonic()
        insert_events(count)
        print(f'inserted {count:,} events in {time.monotonic() - started:.1f}s', flush=True)
    else:
        print(f'reusing {existing:,} events already in the table', flush=True)
    job = Job.objects.filter(name=MARKER).first() or Job.objects.create(name=MARKER, job_id=uuid.uuid4())
    if not RetryEvent.objects.filter(job=job).exists():
        RetryEvent.objects.bulk_create([
            RetryEvent(job=job, job_uuid=job.job_id, job_name=job.name, kind='retry', attempt=i, delay=0.5,
                       worker_host=MARKER)
            for i in range(1, PANEL_EVENTS + 1)
        ])
    user = User.objects.filter(username=USERNAME).first() or User.objects.create_user(
        username=USERNAME, is_superuser=True)
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM {RetryEvent._meta.db_table}')
        total = cursor.fetchone()[0]
    return job, user, total


def cleanup():
    from core.models import Job
    from django.db import connection
    from users.models import User

    from netbox_safejobs.models import RetryEvent

    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM {RetryEvent._meta.db_table} WHERE worker_host = %s', [MARKER])
    Job.objects.filter(name=MARKER).delete()
    User.objects.filter(username=USERNAME).delete()


def measure(client, url, repeat, warmup=2, **headers):
    for _ in range(warmup):
        response = client.get(url, **headers)
        if response.status_code != 200:
            raise SystemExit(f'{url} answered {response.status_code}: {response.content[:500]!r}')
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url, **headers)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, url
    timings.sort()
    p95 = timings[min(len(timings) - 1, int(round(0.95 * (len(timings) - 1))))]
    return statistics.median(timings), p95


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--events', type=int, default=1_000_000, help='events in the table (default 1,000,000)')
    parser.add_argument('--repeat', type=int, default=15, help='timed requests per case (default 15)')
    parser.add_argument('--keep', action='store_true', help='keep the events for a later run')
    opts = parser.parse_args(argv)

    setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    job, user, total = prepare(opts.events)
    # One session for the pages and the API (NetBox's REST API accepts the session of a logged-in user).
    client = Client()
    client.force_login(user)

    # A job in the middle of the table (its events are ~45 days old), as generated by insert_events().
    sample_uuid = str(uuid.UUID(hashlib.md5(f'job{opts.events // 2 // 5}'.encode()).hexdigest()))
    ui = reverse('plugins:netbox_safejobs:retryevent_list')
    api = reverse('plugins-api:netbox_safejobs-api:retryevent-list')
    cases = (
        ('list page, first page', ui),
        ('list page, filter kind=gave_up', f'{ui}?kind=gave_up'),
        ('list page, filter kind=retry', f'{ui}?kind=retry'),
        ('list page, filter job_uuid', f'{ui}?job_uuid={sample_uuid}'),
        ('API list, first page', api),
        ('API list, filter kind=gave_up', f'{api}?kind=gave_up'),
        ('API list, filter job_uuid', f'{api}?job_uuid={sample_uuid}'),
        ('Job page with panel', reverse('core:job', kwargs={'pk': job.pk})),
    )
    with connection.cursor() as cursor:
        cursor.execute('SHOW server_version')
        pg_version = cursor.fetchone()[0]
    print(f'{total:,} retry events in the table; PostgreSQL {pg_version}; DEBUG={settings.DEBUG}; '
          f'{opts.repeat} timed requests per case; {os.cpu_count()} CPUs', flush=True)
    print(f'{"case":40} {"p50 ms":>8} {"p95 ms":>8}')
    try:
        for name, url in cases:
            p50, p95 = measure(client, url, opts.repeat)
            print(f'{name:40} {p50:8.1f} {p95:8.1f}', flush=True)
    finally:
        if not opts.keep:
            cleanup()
            print('removed the benchmark events, job and user', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

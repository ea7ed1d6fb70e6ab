"""
Scale benchmark of the plugin's pages: the retry event list page, REST API list and panel on NetBox's Job page with
1,000,000 retry events in the table; the jobs in flight page, REST API list and dashboard counts with 100,000 jobs
in flight.

    scripts/dev bench ui_scale                      # both parts, 15 timed requests per case
    scripts/dev bench ui_scale --events 200000 --repeat 30 --keep
    scripts/dev bench ui_scale --part in-flight --dispatches 100000

Requests go through Django's test client in this process: the whole NetBox middleware and view stack (login,
permissions, filters, templates, serializers) and real PostgreSQL, without the network or a web server in front.
Prints the p50 and p95 of each case, in milliseconds.

The events are inserted with one INSERT ... SELECT generate_series (marked worker_host = 'ui-scale-bench') and
removed afterwards unless --keep is given (a later run with --keep reuses them). So are the jobs in flight: their Job
rows (named 'ui-scale-bench …') and JobDispatch rows, with three workers' heartbeats, one of them dead. The database
is the one the environment names (``scripts/dev bench`` uses the development database).
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


# state -> share of the jobs in flight (a busy installation: most claimed or sent, a few owed and stuck)
DISPATCH_MIX = (('claimed', 60), ('sent', 28), ('owed', 6), ('written', 4), ('stuck', 2))


def _job_columns(cursor):
    """
    The NOT NULL columns of core_job without a database default (they differ between NetBox versions), each with
    the SQL of its value for row ``g``.
    """
    known = {
        'name': "%(marker)s || ' ' || g", 'created': "now() - (g * interval '10 milliseconds')",
        'status': "CASE WHEN g %% 100 < 62 THEN 'running' ELSE 'pending' END",
        'job_id': "md5('inflight' || g)::uuid", 'queue_name': "'default'",
    }
    cursor.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'core_job' "
        "AND is_nullable = 'NO' AND column_default IS NULL AND column_name <> 'id'"
    )
    defaults = {'ARRAY': "'{}'", 'jsonb': "'{}'", 'integer': '0', 'bigint': '0', 'boolean': 'false'}
    return {name: known.get(name) or defaults.get(data_type, "''") for name, data_type in cursor.fetchall()}


def insert_dispatches(count):
    """``count`` jobs in flight, states in DISPATCH_MIX proportions, each with its own Job row; three workers."""
    from core.models import Job
    from django.db import connection, transaction

    from netbox_safejobs.models import JobDispatch, WorkerHeartbeat

    workers = WorkerHeartbeat._meta.db_table
    dispatches = JobDispatch._meta.db_table
    jobs = Job._meta.db_table
    bounds = []
    bound = 0
    for state, share in DISPATCH_MIX:
        bound += share
        bounds.append((state, bound))

    def when(*states):
        conditions = []
        low = 0
        for state, high in bounds:
            if state in states:
                conditions.append(f'(g %% 100 >= {low} AND g %% 100 < {high})')
            low = high
        return ' OR '.join(conditions)

    with transaction.atomic(), connection.cursor() as cursor:
        columns = _job_columns(cursor)
        cursor.execute(
            f"INSERT INTO {jobs} ({', '.join(columns)}) SELECT {', '.join(columns.values())} "
            f'FROM generate_series(1, %(count)s) AS g',
            {'marker': MARKER, 'count': count},
        )
        cursor.execute(
            f'INSERT INTO {workers} (id, name, host, pid, version, started, seen) VALUES '
            f"(md5('bench-worker-1')::uuid, 'bench-1', %(marker)s, 1, 'bench', now(), now() + interval '1 day'), "
            f"(md5('bench-worker-2')::uuid, 'bench-2', %(marker)s, 2, 'bench', now(), now() + interval '1 day'), "
            f"(md5('bench-worker-dead')::uuid, 'bench-dead', %(marker)s, 3, 'bench', now(), "
            f"now() - interval '1 day')",
            {'marker': MARKER},
        )
        # Timestamps of live rows lie in the future so that they stay live (and the written ones unsent) however long
        # the run takes; the stuck ones are a day old.
        cursor.execute(
            f"""
            INSERT INTO {dispatches} (job_id, job_uuid, queue_name, runner, method, payload, created, sent, owed,
                                      recoveries, claimed, token, worker, heartbeat, worker_host, worker_pid)
            SELECT j.id, j.job_id, 'default', 'netbox.jobs.AsyncViewJob', 'enqueue', NULL,
                   CASE WHEN {when('written')} THEN now() + interval '1 day' ELSE j.created END,
                   CASE WHEN {when('sent', 'claimed', 'stuck')} THEN j.created END,
                   CASE WHEN {when('owed')} THEN j.created END,
                   CASE WHEN {when('owed')} THEN 1 ELSE 0 END,
                   CASE WHEN {when('claimed', 'stuck')} THEN j.created END,
                   CASE WHEN {when('claimed', 'stuck')} THEN md5('token' || g)::uuid END,
                   CASE WHEN {when('stuck')} THEN md5('bench-worker-dead')::uuid
                        WHEN {when('claimed')} THEN md5('bench-worker-' || (1 + g %% 2))::uuid END,
                   NULL,
                   CASE WHEN {when('claimed', 'stuck')} THEN %(marker)s ELSE '' END,
                   CASE WHEN {when('claimed', 'stuck')} THEN 2000 + g %% 64 END
            FROM generate_series(1, %(count)s) AS g
            JOIN {jobs} j ON j.job_id = md5('inflight' || g)::uuid
            """,
            {'marker': MARKER, 'count': count},
        )
    with connection.cursor() as cursor:
        for table in (jobs, dispatches, workers):
            cursor.execute(f'VACUUM (ANALYZE) {table}')


def prepare_dispatches(count):
    from django.db import connection

    from netbox_safejobs.models import JobDispatch

    existing = JobDispatch.objects.filter(job__name__startswith=f'{MARKER} ').count()
    if existing != count:
        if existing:
            cleanup_dispatches()
        started = time.monotonic()
        insert_dispatches(count)
        print(f'inserted {count:,} jobs in flight in {time.monotonic() - started:.1f}s', flush=True)
    else:
        print(f'reusing {existing:,} jobs in flight already in the table', flush=True)
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM {JobDispatch._meta.db_table}')
        return cursor.fetchone()[0]


def cleanup_dispatches():
    from core.models import Job
    from django.db import connection

    from netbox_safejobs.models import WorkerHeartbeat

    with connection.cursor() as cursor:
        # The dispatch rows go with their Job rows (ON DELETE CASCADE in Django, not in the schema: delete both).
        cursor.execute(f'DELETE FROM netbox_safejobs_jobdispatch WHERE job_id IN '
                       f'(SELECT id FROM {Job._meta.db_table} WHERE name LIKE %s)', [f'{MARKER} %'])
        cursor.execute(f'DELETE FROM {Job._meta.db_table} WHERE name LIKE %s', [f'{MARKER} %'])
        cursor.execute(f'DELETE FROM {WorkerHeartbeat._meta.db_table} WHERE host = %s', [MARKER])


def measure_call(func, repeat, warmup=2):
    for _ in range(warmup):
        func()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p95 = timings[min(len(timings) - 1, int(round(0.95 * (len(timings) - 1))))]
    return statistics.median(timings), p95


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
    parser.add_argument('--part', choices=('all', 'events', 'in-flight'), default='all',
                        help='retry events, jobs in flight, or both (default)')
    parser.add_argument('--events', type=int, default=1_000_000, help='events in the table (default 1,000,000)')
    parser.add_argument('--dispatches', type=int, default=100_000,
                        help='jobs in flight in the table (default 100,000)')
    parser.add_argument('--repeat', type=int, default=15, help='timed requests per case (default 15)')
    parser.add_argument('--keep', action='store_true', help='keep the events and jobs in flight for a later run')
    opts = parser.parse_args(argv)

    setup_django()
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute('SHOW server_version')
        pg_version = cursor.fetchone()[0]
    print(f'PostgreSQL {pg_version}; DEBUG={settings.DEBUG}; {opts.repeat} timed requests per case; '
          f'{os.cpu_count()} CPUs', flush=True)
    code = 0
    if opts.part in ('all', 'events'):
        code = run_events(opts) or code
    if opts.part in ('all', 'in-flight'):
        code = run_in_flight(opts) or code
    return code


def print_results(cases, timer):
    print(f'{"case":48} {"p50 ms":>8} {"p95 ms":>8}')
    for name, target in cases:
        p50, p95 = timer(target)
        print(f'{name:48} {p50:8.1f} {p95:8.1f}', flush=True)


def run_events(opts):
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
    print(f'{total:,} retry events in the table', flush=True)
    try:
        print_results(cases, lambda url: measure(client, url, opts.repeat))
    finally:
        if not opts.keep:
            cleanup()
            print('removed the benchmark events, job and user', flush=True)
    return 0


def run_in_flight(opts):
    from django.test import Client, RequestFactory
    from django.urls import reverse
    from users.models import User

    from netbox_safejobs.widgets import RetryEventsWidget

    total = prepare_dispatches(opts.dispatches)
    user = User.objects.filter(username=USERNAME).first() or User.objects.create_user(
        username=USERNAME, is_superuser=True)
    client = Client()
    client.force_login(user)
    sample_uuid = str(uuid.UUID(hashlib.md5(f'inflight{opts.dispatches // 2}'.encode()).hexdigest()))
    ui = reverse('plugins:netbox_safejobs:jobdispatch_list')
    api = reverse('plugins-api:netbox_safejobs-api:jobdispatch-list')
    cases = (
        ('in flight: list page, first page', ui),
        ('in flight: list page, state=owed', f'{ui}?state=owed'),
        ('in flight: list page, state=stuck', f'{ui}?state=stuck'),
        ('in flight: list page, state=claimed', f'{ui}?state=claimed'),
        ('in flight: list page, sort by age (newest)', f'{ui}?sort=age'),
        ('in flight: list page, sort by state', f'{ui}?sort=state'),
        ('in flight: list page, sort by job', f'{ui}?sort=job'),
        ('in flight: list page, sort by lease heartbeat', f'{ui}?sort=-heartbeat'),
        ('in flight: list page, q=<job UUID>', f'{ui}?q={sample_uuid}'),
        ('in flight: list page, worker_host', f'{ui}?worker_host={MARKER}'),
        ('in flight: list page, runner__ic', f'{ui}?runner__ic=asyncview'),
        ('in flight: API list, first page', api),
        ('in flight: API list, state=stuck', f'{api}?state=stuck'),
    )
    print(f'{total:,} jobs in flight in the table', flush=True)
    request = RequestFactory().get('/')
    request.user = user
    try:
        print_results(cases, lambda url: measure(client, url, opts.repeat))
        print_results((('in flight: dashboard widget (owed, stuck counts)', None),),
                      lambda _: measure_call(lambda: RetryEventsWidget().render(request), opts.repeat))
    finally:
        if not opts.keep:
            cleanup_dispatches()
            User.objects.filter(username=USERNAME).delete()
            print('removed the benchmark jobs in flight and user', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""
Scale benchmark of the plugin's pages: the retry event list page, REST API list and panel on NetBox's Job page with
1,000,000 retry events in the table; the jobs in flight page, REST API list and dashboard counts with 100,000 jobs
in flight, beside NetBox's own Jobs list of those 100,000 Job rows as the reference of what a page of 50 rows costs
NetBox on the same machine in the same run.

    scripts/dev bench ui_scale                      # both parts, 15 rounds
    scripts/dev bench ui_scale --events 200000 --repeat 30 --keep
    scripts/dev bench ui_scale --part in-flight --dispatches 100000

Requests go through Django's test client in this process: the whole NetBox middleware and view stack (login,
permissions, filters, templates, serializers) and real PostgreSQL, without the network or a web server in front.
The cases are timed in rounds, NetBox's Jobs list among them: each round requests every case once, in alternating
order, so that whatever else the machine does falls on all of them alike. Prints the p50 and p95 of each case and
the p50 of the time its SQL statements took, in milliseconds.

The events are inserted with one INSERT ... SELECT generate_series (marked worker_host = 'ui-scale-bench') and
removed afterwards unless --keep is given (a later run with --keep reuses them). So are the jobs in flight: their Job
rows (named 'ui-scale-bench …') and JobDispatch rows, with three workers' heartbeats, one of them dead. The database
is the one the environment names (``scripts/dev bench`` uses the development database).
"""

import argparse
import hashlib
import os
import re
import statistics
import sys
import time
import uuid
from datetime import timedelta

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')

MARKER = 'ui-scale-bench'
USERNAME = 'ui-scale-bench'
PANEL_EVENTS = 25

# kind -> share of the events (a realistic mix: mostly retries, few give-ups), and its detail text
KIND_MIX = (
    ('retry', 60), ('found_after_retry', 20), ('recovered', 6), ('duplicate_skipped', 5), ('database_error', 3),
    ('gave_up', 3), ('dispatch_failed', 2), ('stuck_errored', 1),
)
KIND_DETAIL = {
    'retry': 'Job row not found (not committed yet, rolled back or deleted); looking again.',
    'found_after_retry': 'Job row found after 2 retries.',
    'gave_up': 'Job row not found after 5 retries; the task is dropped.',
    'database_error': 'OperationalError: connection to server at "db-1" failed: timeout expired',
    'dispatch_failed': 'ConnectionError: Error 111 connecting to redis:6379. Connection refused.',
}
# Each job has one runner (the job number picks it); the events' worker hosts are MARKER-0 … MARKER-7.
RUNNERS = (
    'netbox.jobs.AsyncViewJob', 'core.jobs.SyncDataSourceJob', 'extras.jobs.ScriptJob',
    'core.jobs.SystemHousekeepingJob',
)
HOSTS = 8


def setup_django():
    import django

    django.setup()


def insert_events(count):
    """Insert ``count`` marked events: ~5 per job UUID, spread over 90 days, kinds in KIND_MIX proportions."""
    from django.db import connection, transaction

    from netbox_safejobs.models import RetryEvent

    table = connection.ops.quote_name(RetryEvent._meta.db_table)
    cases = []
    details = []
    bound = 0
    for kind, share in KIND_MIX:
        bound += share
        cases.append(f"WHEN (g %% 100) < {bound} THEN '{kind}'")
        details.append(f"WHEN (g %% 100) < {bound} THEN '{KIND_DETAIL.get(kind, '')}'")
    runners = ', '.join(f"'{runner}'" for runner in RUNNERS)
    sql = f"""
        INSERT INTO {table} (time, job_id, job_uuid, job_name, runner, queue, kind, attempt, delay, detail,
                             worker_host, worker_pid)
        SELECT now() - (g * interval '7776 milliseconds'),
               NULL,
               md5('job' || (g / 5))::uuid,
               'bench job ' || (g / 5),
               (ARRAY[{runners}])[1 + (g / 5) %% {len(RUNNERS)}],
               (ARRAY['high', 'default', 'low'])[1 + g %% 3],
               CASE {' '.join(cases)} END,
               1 + g %% 5,
               0.5 * (1 + g %% 5),
               CASE {' '.join(details)} END,
               %s || '-' || (g %% {HOSTS}),
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

    from netbox_safejobs.models import RetryEvent

    existing = RetryEvent.objects.filter(worker_host__startswith=f'{MARKER}-', job__isnull=True).count()
    # Events of an earlier layout of this script (one worker host, one runner) are replaced.
    earlier = RetryEvent.objects.filter(worker_host=MARKER, job__isnull=True).exists()
    if existing != count or earlier:
        if existing or earlier:
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
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM {RetryEvent._meta.db_table}')
        total = cursor.fetchone()[0]
    return job, total


def cleanup():
    from core.models import Job
    from django.db import connection

    from netbox_safejobs.models import RetryEvent

    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM {RetryEvent._meta.db_table} WHERE worker_host = %s OR worker_host LIKE %s',
                       [MARKER, f'{MARKER}-%'])
    Job.objects.filter(name=MARKER).delete()


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

    from netbox_safejobs.models import RetryEvent, WorkerHeartbeat

    with connection.cursor() as cursor:
        # Events of these jobs (a worker's relay or liveness pass may have written some while the rows were here)
        # keep their UUID and lose the link, as Django's SET_NULL does; the schema has no ON DELETE.
        cursor.execute(f'UPDATE {RetryEvent._meta.db_table} SET job_id = NULL WHERE job_id IN '
                       f'(SELECT id FROM {Job._meta.db_table} WHERE name LIKE %s)', [f'{MARKER} %'])
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


class QueryTimer:
    """Adds up the time of the SQL statements run while it is installed (``connection.execute_wrapper``)."""

    def __init__(self):
        self.total = 0.0

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.total += time.perf_counter() - started


def measure_rounds(client, cases, repeat, warmup=2):
    """
    Time every case in rounds: each round requests every case once, forwards in even rounds and backwards in odd
    ones, so that the machine's drift (another process, a garbage collection, a warm or cold cache) falls on every
    case alike rather than on the cases timed while it lasted. Returns {name: (p50, p95, p50 of the SQL time)} in
    milliseconds. After a sorted URL, the ordering NetBox saved as the user's preference for that table is cleared
    (untimed), so that the next case reads the table in its default order.
    """
    from django.db import connection

    def request(url):
        timer = QueryTimer()
        with connection.execute_wrapper(timer):
            started = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - started) * 1000
        if 'sort=' in url:
            client.get(f'{url.split("?")[0]}?sort=')
        if response.status_code != 200:
            raise SystemExit(f'{url} answered {response.status_code}: {response.content[:500]!r}')
        return elapsed, timer.total * 1000

    for _ in range(warmup):
        for _name, url in cases:
            request(url)
    timings = {name: ([], []) for name, _url in cases}
    for round_number in range(repeat):
        for name, url in (cases if round_number % 2 == 0 else cases[::-1]):
            elapsed, sql = request(url)
            timings[name][0].append(elapsed)
            timings[name][1].append(sql)
    results = {}
    for name, (elapsed, sql) in timings.items():
        elapsed.sort()
        p95 = elapsed[min(len(elapsed) - 1, int(round(0.95 * (len(elapsed) - 1))))]
        results[name] = (statistics.median(elapsed), p95, statistics.median(sql))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--part', choices=('all', 'events', 'in-flight', 'insert'), default='all',
                        help='retry events, jobs in flight, or both (default); insert: the cost of the indexes of '
                             'migration 0004 to the writing of one event')
    parser.add_argument('--events', type=int, default=1_000_000, help='events in the table (default 1,000,000)')
    parser.add_argument('--dispatches', type=int, default=100_000,
                        help='jobs in flight in the table (default 100,000)')
    parser.add_argument('--repeat', type=int, default=15, help='timed requests per case (default 15)')
    parser.add_argument('--only', metavar='REGEX', help='run only the cases whose name matches REGEX')
    parser.add_argument('--markdown', action='store_true', help='print the results as the rows of a Markdown table')
    parser.add_argument('--keep', action='store_true', help='keep the events and jobs in flight for a later run')
    opts = parser.parse_args(argv)

    setup_django()
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute('SHOW server_version')
        pg_version = cursor.fetchone()[0]
    load = ', '.join(f'{value:.2f}' for value in os.getloadavg())
    print(f'PostgreSQL {pg_version}; DEBUG={settings.DEBUG}; {opts.repeat} timed requests per case; '
          f'{os.cpu_count()} CPUs; load average {load}', flush=True)
    if opts.part == 'insert':
        code = run_insert_cost(opts)
    else:
        code = run_pages(opts)
    print(f'load average at the end: {", ".join(f"{value:.2f}" for value in os.getloadavg())}', flush=True)
    return code


def run_pages(opts):
    """Prepare the rows of the parts asked for, time their cases in rounds with NetBox's Jobs list, print."""
    from django.test import Client, RequestFactory
    from django.urls import reverse
    from users.models import User

    from netbox_safejobs.widgets import RetryEventsWidget

    user = User.objects.filter(username=USERNAME).first() or User.objects.create_user(
        username=USERNAME, is_superuser=True)
    # The reference: NetBox's own list of Job rows (50 a page, as on the plugin's pages), timed in the same rounds.
    cases = [("NetBox's Jobs list, first page (reference)", reverse('core:job_list'))]
    try:
        if opts.part in ('all', 'events'):
            cases += events_part(opts)
        if opts.part in ('all', 'in-flight'):
            cases += in_flight_part(opts)
        if opts.only:
            cases = [case for case in cases if case[0] == cases[0][0] or re.search(opts.only, case[0])]
        # One session for the pages and the API (NetBox's REST API accepts the session of a logged-in user).
        client = Client()
        client.force_login(user)
        for url in {url.split('?')[0] for _name, url in cases}:
            client.get(f'{url}?sort=')
        print(f'{len(cases)} cases, {opts.repeat} rounds', flush=True)
        print_results(measure_rounds(client, cases, opts.repeat), opts)
        if opts.part in ('all', 'in-flight'):
            request = RequestFactory().get('/')
            request.user = user
            p50, p95 = measure_call(lambda: RetryEventsWidget().render(request), opts.repeat)
            print_results({'in flight: dashboard widget (owed, stuck counts)': (p50, p95)}, opts)
    finally:
        if not opts.keep:
            if opts.part in ('all', 'events'):
                cleanup()
            if opts.part in ('all', 'in-flight'):
                cleanup_dispatches()
            User.objects.filter(username=USERNAME).delete()
            print('removed the benchmark events, jobs in flight and user', flush=True)
    return 0


def print_results(results, opts):
    """Print {name: (p50, p95[, SQL])} in the order given."""
    if not opts.markdown:
        print(f'{"case":64} {"p50 ms":>8} {"p95 ms":>8} {"SQL ms":>8}')
    for name, (p50, p95, *sql) in results.items():
        sql = f'{sql[0]:.1f}' if sql else ''
        if opts.markdown:
            print(f'| {name} | {p50:.1f} | {p95:.1f} | {sql} |', flush=True)
        else:
            print(f'{name:64} {p50:8.1f} {p95:8.1f} {sql:>8}', flush=True)


def event_cases(ui, api, job, sample_uuid, sample_name, now):
    """
    (name, URL) of every case of the retry event list: each filter of ``RetryEventFilterSet`` with the lookups the
    filter form and the API offer, the quick search, each sortable column of ``RetryEventTable`` both ways, and the
    same filters and orderings through the REST API.
    """
    from urllib.parse import urlencode

    from django.urls import reverse

    day_start = (now - timedelta(days=45)).isoformat()
    day_end = (now - timedelta(days=44)).isoformat()
    hour_ago = (now - timedelta(hours=1)).isoformat()
    host = f'{MARKER}-3'
    filters = (
        # (label, query) -- the share of the 1,000,000 events that match, where it is not obvious, in the label
        ('none (first page)', {}),
        ('kind=gave_up (3 %)', {'kind': 'gave_up'}),
        ('kind=retry (60 %)', {'kind': 'retry'}),
        ('kind=gave_up&kind=database_error', [('kind', 'gave_up'), ('kind', 'database_error')]),
        ('kind__n=retry (40 %)', {'kind__n': 'retry'}),
        ('job_uuid', {'job_uuid': sample_uuid}),
        ('job_uuid__n', {'job_uuid__n': sample_uuid}),
        ('job_id', {'job_id': job.pk}),
        ('job_exists=true', {'job_exists': 'true'}),
        ('job_exists=false', {'job_exists': 'false'}),
        ('worker=<host> (12.5 %)', {'worker': host}),
        ('worker=<unknown host> (none)', {'worker': 'no-such-host'}),
        ('worker_host=<host>', {'worker_host': host}),
        ('worker_host__n=<host>', {'worker_host__n': host}),
        ('worker_host__ic=<part of a host>', {'worker_host__ic': 'bench-3'}),
        ('worker_host__isw=<host prefix>', {'worker_host__isw': 'UI-SCALE'}),
        ('worker_pid (1.6 %)', {'worker_pid': 1010}),
        ('worker_pid__gte', {'worker_pid__gte': 1060}),
        ('runner=<runner> (25 %)', {'runner': 'core.jobs.SyncDataSourceJob'}),
        ('runner__ic=<part of a runner>', {'runner__ic': 'syncdatasource'}),
        ('runner__ic=<no match>', {'runner__ic': 'no.such.Runner'}),
        ('runner__n=<runner>', {'runner__n': 'core.jobs.SyncDataSourceJob'}),
        ('queue=low (33 %)', {'queue': 'low'}),
        ('queue=<unused queue> (none)', {'queue': 'nightly'}),
        ('job_name=<name> (5 events)', {'job_name': sample_name}),
        ('job_name__ic=<part of a name>', {'job_name__ic': sample_name.split()[-1]}),
        ('job_name__ie=<name>', {'job_name__ie': sample_name.upper()}),
        ('job_name__isw=<prefix of names>', {'job_name__isw': sample_name[:-2]}),
        ('attempt=5 (20 %)', {'attempt': 5}),
        ('attempt__gte=4', {'attempt__gte': 4}),
        ('delay__gte=2.5 (20 %)', {'delay__gte': '2.5'}),
        ('delay__lt=1 (20 %)', {'delay__lt': '1'}),
        ('delay=1.5', {'delay': '1.5'}),
        ('time__after=<1 hour ago>', {'time__after': hour_ago}),
        ('time__after&time__before=<a day, 45 days ago>', {'time__after': day_start, 'time__before': day_end}),
        ('time__before=<45 days ago>', {'time__before': day_start}),
        ('id__gte', {'id__gte': 500_000}),
        ('q=<job UUID>', {'q': sample_uuid}),
        ('q=<job name>', {'q': sample_name}),
        ('q=<worker host> (12.5 %)', {'q': host}),
        ('q=<part of a runner> (25 %)', {'q': 'SyncDataSource'}),
        ('q=<words of a detail> (3 %)', {'q': 'timeout expired'}),
        ("q=<a kind's label>", {'q': 'gave up'}),
        ('q=<no match>', {'q': 'no-such-text'}),
        ('q=<2 characters>', {'q': 'zq'}),
        ('kind=gave_up&worker=<host>', {'kind': 'gave_up', 'worker': host}),
        ('kind=retry&q=<worker host>', {'kind': 'retry', 'q': host}),
    )
    cases = []
    for label, query in filters:
        suffix = f'?{urlencode(query)}' if query else ''
        cases.append((f'list page, {label}', f'{ui}{suffix}'))
    # The sortable columns of RetryEventTable, as the ``sort`` parameter names them.
    for column in ('id', 'time', 'kind', 'job', 'job_uuid', 'runner', 'queue', 'attempt', 'delay', 'worker_host',
                   'worker_pid'):
        for order in (column, f'-{column}'):
            cases.append((f'list page, sort={order}', f'{ui}?sort={order}'))
    cases.append(('list page, kind=gave_up&sort=-delay', f'{ui}?kind=gave_up&sort=-delay'))
    cases.append(('list page, page 100', f'{ui}?page=100'))
    for label, query in filters:
        suffix = f'?{urlencode(query)}' if query else ''
        cases.append((f'API list, {label}', f'{api}{suffix}'))
    for field in ('id', 'time', 'kind', 'job_uuid', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'worker_host',
                  'worker_pid'):
        for order in (field, f'-{field}'):
            cases.append((f'API list, ordering={order}', f'{api}?ordering={order}'))
    cases.append(('API list, brief', f'{api}?brief=1'))
    cases.append(('API list, offset=5000', f'{api}?offset=5000'))
    cases.append(('Job page with panel', reverse('core:job', kwargs={'pk': job.pk})))
    return cases


def events_part(opts):
    """Prepare the retry events; return the cases of the retry event list, its API and the Job page panel."""
    from django.urls import reverse
    from django.utils import timezone

    job, total = prepare(opts.events)
    # A job in the middle of the table (its events are ~45 days old), as generated by insert_events().
    sample_job = opts.events // 2 // 5
    sample_uuid = str(uuid.UUID(hashlib.md5(f'job{sample_job}'.encode()).hexdigest()))
    ui = reverse('plugins:netbox_safejobs:retryevent_list')
    api = reverse('plugins-api:netbox_safejobs-api:retryevent-list')
    print(f'{total:,} retry events in the table', flush=True)
    return event_cases(ui, api, job, sample_uuid, f'bench job {sample_job}', timezone.now())


def in_flight_part(opts):
    """Prepare the jobs in flight; return the cases of the jobs in flight page and API."""
    from django.urls import reverse

    total = prepare_dispatches(opts.dispatches)
    sample_uuid = str(uuid.UUID(hashlib.md5(f'inflight{opts.dispatches // 2}'.encode()).hexdigest()))
    ui = reverse('plugins:netbox_safejobs:jobdispatch_list')
    api = reverse('plugins-api:netbox_safejobs-api:jobdispatch-list')
    cases = [
        ('in flight: list page, first page', ui),
        ('in flight: list page, state=owed', f'{ui}?state=owed'),
        ('in flight: list page, state=stuck', f'{ui}?state=stuck'),
        ('in flight: list page, state=claimed (60 %)', f'{ui}?state=claimed'),
        ('in flight: list page, state=written', f'{ui}?state=written'),
        ('in flight: list page, state=sent', f'{ui}?state=sent'),
        ('in flight: list page, recovered=true', f'{ui}?recovered=true'),
        ('in flight: list page, q=<job UUID>', f'{ui}?q={sample_uuid}'),
        ('in flight: list page, q=<text>', f'{ui}?q=asyncview'),
        ('in flight: list page, job_uuid', f'{ui}?job_uuid={sample_uuid}'),
        ('in flight: list page, worker_host (62 %)', f'{ui}?worker_host={MARKER}'),
        ('in flight: list page, worker_pid', f'{ui}?worker_pid=2010'),
        ('in flight: list page, runner', f'{ui}?runner=netbox.jobs.AsyncViewJob'),
        ('in flight: list page, runner__ic (every row)', f'{ui}?runner__ic=asyncview'),
        ('in flight: list page, queue', f'{ui}?queue=default'),
        ('in flight: list page, created__after', f'{ui}?created__after=2000-01-01T00:00:00Z'),
    ]
    # The sortable columns of JobDispatchTable, each way.
    for column in ('id', 'job', 'job_uuid', 'runner', 'queue_name', 'method', 'state', 'age', 'created', 'sent', 'owed',
                   'claimed', 'heartbeat', 'worker_host', 'worker_pid', 'recoveries'):
        for order in (column, f'-{column}'):
            cases.append((f'in flight: list page, sort={order}', f'{ui}?sort={order}'))
    cases += [
        ('in flight: API list, first page', api),
        ('in flight: API list, state=stuck', f'{api}?state=stuck'),
        ('in flight: API list, q=<job UUID>', f'{api}?q={sample_uuid}'),
        ('in flight: API list, runner__ic (every row)', f'{api}?runner__ic=asyncview'),
        ('in flight: API list, worker_host (62 %)', f'{api}?worker_host={MARKER}'),
    ]
    print(f'{total:,} jobs in flight in the table', flush=True)
    return cases


# The indexes migration 0004 added to the retry event table.
MIGRATION_0004_INDEXES = (
    'netbox_safejobs_job_name_idx', 'netbox_safejobs_runner_idx', 'netbox_safejobs_queue_idx',
    'netbox_safejobs_worker_idx', 'netbox_safejobs_worker_pid_idx', 'netbox_safejobs_attempt_idx',
    'netbox_safejobs_delay_idx', 'netbox_safejobs_search_idx', 'netbox_safejobs_name_trgm',
    'netbox_safejobs_runner_trgm', 'netbox_safejobs_worker_trgm',
)


def run_insert_cost(opts, rows=2000):
    """
    Single-row INSERTs of events, as ``events.record()`` writes them, with every index and with those of migration
    0004 dropped; each round in a transaction that is rolled back (the indexes and rows come back). Prints the
    median time of one INSERT of each round, in milliseconds.
    """
    from django.db import connection, transaction

    from netbox_safejobs.models import RetryEvent

    table = RetryEvent._meta.db_table
    sql = (
        f'INSERT INTO {table} (time, job_uuid, job_name, runner, queue, kind, attempt, delay, detail, worker_host, '
        f"worker_pid) VALUES (now(), %s, %s, 'core.jobs.SyncDataSourceJob', 'default', 'retry', %s, 0.5, "
        f"'Job row not found (not committed yet, rolled back or deleted); looking again.', %s, %s)"
    )

    class Rollback(Exception):
        pass

    results = {'every index': [], 'without those of 0004': []}
    for _ in range(opts.repeat):
        for label, drop in (('every index', ()), ('without those of 0004', MIGRATION_0004_INDEXES)):
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    for name in drop:
                        cursor.execute(f'DROP INDEX IF EXISTS {name}')
                    timings = []
                    for i in range(rows):
                        started = time.perf_counter()
                        cursor.execute(sql, [uuid.uuid4(), f'nightly sync {i}', 1 + i % 5, f'worker-{i % 4}', 1000 + i])
                        timings.append((time.perf_counter() - started) * 1000)
                    results[label].append(statistics.median(timings))
                    raise Rollback
            except Rollback:
                pass
    for label, values in results.items():
        print(f'INSERT of one event, {label}: median {statistics.median(values):.3f} ms '
              f'(rounds: {", ".join(f"{value:.3f}" for value in values)})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

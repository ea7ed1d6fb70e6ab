"""
The operational health of an installation: what around the plugin would lose or stall jobs although the plugin works.

One list of findings, each with a level, a message and the fix, computed by ``check()`` and shown with the same
wording by ``netbox safejobs_check``, ``/api/plugins/safejobs/health/`` and the Health panel of the UI:

- ``settings``: the plugin's settings in this process, as validated, and the switches that are off;
- ``database``: PostgreSQL answers; the plugin's migrations are all applied;
- ``workers``: every worker RQ lists, on every Redis of ``RQ_QUEUES``, heartbeats as a worker with this plugin;
- ``versions``: every worker runs this process's release of the plugin;
- ``redis``: each Redis answers, keeps tasks under memory pressure (``maxmemory-policy``) and across a restart
  (persistence);
- ``clock``: the clocks of this host and of each worker host against PostgreSQL's;
- ``backlog``: owed pushes and the oldest one's age, leases whose worker stopped heartbeating, stuck candidates;
- ``adoption``: jobs waiting or running that the plugin does not watch (left by NetBox without it), and the jobs it
  adopted or could not;
- ``chains``: system jobs with more than one future run.

Every age is measured with the database's clock, as the relay and the liveness check measure it. ``backlog()`` is also
what the Prometheus gauges read (``metrics.py``): one statement.
"""

import functools
import logging
import time
from dataclasses import asdict, dataclass, field

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from . import compat
from .choices import CLAIMABLE_STATES, RUNNING
from .jobs import system_job_runners
from .queues import redis_groups
from .settings import DEFAULT_SETTINGS, PLUGIN_NAME, get_settings, retired_keys_warnings, validate_settings
from .version import __version__

__all__ = (
    'CHECKS',
    'CLOCK_SKEW_WARNING',
    'COVERAGE_MAX_AGE',
    'Finding',
    'HealthReport',
    'LEVELS',
    'OWED_AGE_WARNING',
    'backlog',
    'check',
    'job_coverage',
    'may_view_health',
)

logger = logging.getLogger('netbox_safejobs.health')

# From best to worst. "info" says something worth knowing that needs no action.
LEVELS = ('ok', 'info', 'warning', 'error')
CHECKS = ('settings', 'database', 'redis', 'workers', 'versions', 'clock', 'backlog', 'adoption', 'chains')

# Seconds: an owed push older than this means no relay is sending (no worker with the plugin, or Redis is down).
OWED_AGE_WARNING = 60
# Seconds between a worker host's clock and PostgreSQL's above which the check warns.
CLOCK_SKEW_WARNING = 5.0

EVICTION_SAFE = ('noeviction',)
WHY_EVICTION = ('Under memory pressure, Redis evicts keys by this policy: an allkeys-* policy can evict queued tasks '
                "and RQ's registries, so a job's task disappears without any error.")
WHY_PERSISTENCE = ('Without persistence, a Redis restart empties every queue. The relay sends again the jobs the '
                   'plugin dispatched, but scheduled tasks, failed-task registries and tasks pushed by processes '
                   'without the plugin are lost.')


@dataclass
class Finding:
    check: str
    level: str
    message: str
    fix: str = ''
    why: str = ''
    data: dict = field(default_factory=dict)


@dataclass
class HealthReport:
    findings: list = field(default_factory=list)
    version: str = __version__

    def add(self, check, level, message, fix='', why='', **data):
        finding = Finding(check, level, message, fix, why, data)
        self.findings.append(finding)
        return finding

    @property
    def status(self):
        worst = max((LEVELS.index(f.level) for f in self.findings), default=0)
        return 'ok' if worst <= LEVELS.index('info') else LEVELS[worst]

    @property
    def exit_code(self):
        return {'ok': 0, 'warning': 1, 'error': 2}[self.status]

    def as_dict(self):
        return {
            'status': self.status,
            'exit_code': self.exit_code,
            'version': self.version,
            'findings': [asdict(f) for f in self.findings],
        }

    def as_text(self):
        lines = []
        for f in self.findings:
            lines.append(f'[{f.level.upper()}] {f.check}: {f.message}')
            if f.why:
                lines.append(f'    why: {f.why}')
            if f.fix:
                lines.append(f'    fix: {f.fix}')
        lines.append(f'status: {self.status}')
        return '\n'.join(lines)


def _describe(e):
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')


# --------------------------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------------------------

def _check_settings(report):
    config = django_settings.PLUGINS_CONFIG.get(PLUGIN_NAME, {})
    try:
        settings = validate_settings(config)
    except ImproperlyConfigured as e:
        report.add('settings', 'error', str(e), fix=f"Correct PLUGINS_CONFIG['{PLUGIN_NAME}'] in configuration.py "
                   'and restart the web server and every worker.')
        return None
    for warning in retired_keys_warnings(config):
        report.add('settings', 'warning', warning, fix='Remove the key from configuration.py.')
    values = {key: getattr(settings, key) for key in DEFAULT_SETTINGS}
    changed = {key: value for key, value in values.items() if value != DEFAULT_SETTINGS[key]}
    report.add('settings', 'ok', 'Settings valid' + (
        ': ' + ', '.join(f'{key}={value!r}' for key, value in changed.items()) if changed else ' (all defaults)'
    ), settings=values)
    switches = {
        'dispatch_on_commit': 'jobs are dispatched as stock NetBox does: a push that fails or never happens is lost',
        'worker_guard': 'workers run jobs without the guard: deleted rows are re-created, duplicates run twice',
        'worker_loop': 'no worker sends owed pushes or closes stuck jobs: `netbox safejobs_recover` must run from '
                       'cron',
        'stuck_job_detection': 'jobs whose worker died stay running',
    }
    for key, consequence in switches.items():
        if not getattr(settings, key):
            report.add('settings', 'warning', f'{key} is off in this process: {consequence}.',
                       fix=f"Remove '{key}': False from PLUGINS_CONFIG['{PLUGIN_NAME}'] unless that is meant, and "
                           'restart.')
    return settings


# --------------------------------------------------------------------------------------------------------------------
# database: reachable, migrations, this host's clock
# --------------------------------------------------------------------------------------------------------------------

@functools.cache
def migrations_on_disk():
    """
    The names of the plugin's migrations installed with this process's code, read once: they change only with a new
    release, which restarts the process. The health panel of the jobs in flight page asks on every view, and building
    Django's whole migration graph each time cost more than the page's own queries.
    """
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    return frozenset(name for app, name in loader.disk_migrations if app == PLUGIN_NAME)


def _check_database(report, using):
    """PostgreSQL's clock, or None when the database does not answer."""
    try:
        before = time.time()
        with connections[using].cursor() as cursor:
            cursor.execute('SELECT extract(epoch FROM clock_timestamp())')
            db_now = float(cursor.fetchone()[0])
        after = time.time()
    except DatabaseError as e:
        report.add('database', 'error', f'PostgreSQL does not answer: {_describe(e)}',
                   fix='Check that PostgreSQL runs and that DATABASES in configuration.py points at it; the database '
                       'checks were skipped.')
        _close(using)
        return None
    skew = (before + after) / 2 - db_now
    _clock_finding(report, 'this host', skew, precision=(after - before) / 2, host='this host')
    on_disk = migrations_on_disk()
    try:
        with connections[using].cursor() as cursor:
            cursor.execute('SELECT name FROM django_migrations WHERE app = %s', [PLUGIN_NAME])
            applied = {row[0] for row in cursor.fetchall()}
    except DatabaseError as e:
        report.add('database', 'error', f'Cannot read the applied migrations: {_describe(e)}',
                   fix='Check the database user may read django_migrations.')
        _close(using)
        return db_now
    missing = sorted(on_disk - applied)
    unknown = sorted(applied - on_disk)
    if missing:
        report.add('database', 'error', f'Migrations of netbox_safejobs not applied: {", ".join(missing)}.',
                   fix='Run `netbox migrate netbox_safejobs` (or `manage.py migrate`), then restart the web server '
                       'and every worker.', migrations=missing)
    if unknown:
        report.add('database', 'warning', f'The database holds netbox_safejobs migrations this release ({__version__}) '
                   f'does not know: {", ".join(unknown)}. A newer release migrated it.',
                   fix='Install that release on this host too, and restart.', migrations=unknown)
    if not missing and not unknown:
        report.add('database', 'ok', f'PostgreSQL answers; all {len(on_disk)} netbox_safejobs migrations applied.')
    return db_now


def _close(using):
    try:
        connections[using].close()
    except Exception:
        pass


def _clock_finding(report, who, skew, precision=0.0, **data):
    data = dict(data, skew_seconds=round(skew, 3), precision_seconds=round(precision, 3))
    # Under a twentieth of a second a skew has no direction worth naming ("0.0s behind").
    if abs(skew) < 0.05:
        text = 'in step with PostgreSQL to 0.1s'
    else:
        text = f'{abs(skew):.1f}s {"ahead of" if skew > 0 else "behind"} PostgreSQL'
    if abs(skew) - precision > CLOCK_SKEW_WARNING:
        report.add('clock', 'warning', f'Clock of {who} is {text}.',
                   fix=f'Run NTP (chrony, systemd-timesyncd) on {who} and on the database host. NetBox stamps jobs '
                       "with the host's clock and schedules jobs by it; the plugin's ages use PostgreSQL's.",
                   **data)
    else:
        report.add('clock', 'ok', f'Clock of {who} within {CLOCK_SKEW_WARNING:.0f}s of PostgreSQL ({text}).', **data)


# --------------------------------------------------------------------------------------------------------------------
# workers, versions, clocks of worker hosts
# --------------------------------------------------------------------------------------------------------------------

def _heartbeats(using):
    """Every heartbeat row, with its age in seconds by the database's clock."""
    from .models import WorkerHeartbeat

    with connections[using].cursor() as cursor:
        cursor.execute(
            f'SELECT id, name, host, pid, version, started, extract(epoch FROM clock_timestamp() - seen), '
            f'extract(epoch FROM host_clock - seen), guard '
            f'FROM {WorkerHeartbeat._meta.db_table} ORDER BY host, pid'
        )
        columns = ('id', 'name', 'host', 'pid', 'version', 'started', 'age', 'skew', 'guard')
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row['age'] = float(row['age'])
        row['skew'] = float(row['skew']) if row['skew'] is not None else None
    return rows


def _redis_label(connection, queues):
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    where = kwargs.get('path') or f'{kwargs.get("host")}:{kwargs.get("port")}'
    if getattr(pool, 'service_name', None) is not None:
        where = f'Sentinel service {pool.service_name}'  # no host or port of its own: the sentinels name the master
    return f'Redis {where}/{kwargs.get("db", 0)} (queues {", ".join(sorted(queues))})'


def _check_workers(report, settings, heartbeats, registered):
    """``registered``: RQ's workers of every Redis that answered, as ``compat.rq_workers()`` gives them."""
    fresh_after = 3 * settings.heartbeat_interval
    by_name = {hb['name']: hb for hb in heartbeats if hb['name']}
    guarded = 0
    for worker in registered:
        hb = by_name.get(worker['name'])
        where = f'{worker["name"]} (host {worker["host"] or "?"}, pid {worker["pid"] or "?"}, queues ' \
                f'{", ".join(worker["queues"]) or "?"})'
        if hb is None:
            report.add(
                'workers', 'error',
                f'RQ worker {where} has no netbox-safejobs heartbeat: it runs jobs without the worker guard, relay '
                f'and liveness check.',
                fix=f'Restart it on {worker["host"] or "its host"} with the plugin installed and enabled (`systemctl '
                    f'restart netbox-rq`), and without worker_loop or worker_guard set to False.',
                worker=worker['name'], host=worker['host'], pid=worker['pid'],
            )
        elif hb['age'] > fresh_after:
            report.add(
                'workers', 'warning',
                f'RQ worker {where} last heartbeated {hb["age"]:.0f}s ago (every {settings.heartbeat_interval}s '
                f'expected): its worker loop is stuck, or the worker died and Redis has not forgotten it yet.',
                fix=f'Look at its log on {worker["host"] or "its host"}; restart it.',
                worker=worker['name'], host=worker['host'], pid=worker['pid'], age=round(hb['age'], 1),
            )
        elif not hb['guard']:
            report.add(
                'workers', 'error',
                f'RQ worker {where} runs netbox-safejobs with the worker guard switched off: it runs jobs unguarded '
                f'(deleted rows re-created, duplicate tasks run twice).',
                fix=f'Remove worker_guard: False from its PLUGINS_CONFIG on {worker["host"] or "its host"} and '
                    f'restart it.',
                worker=worker['name'], host=worker['host'], pid=worker['pid'],
            )
        elif (hb['host'], hb['pid']) != (worker['host'], worker['pid']):
            report.add(
                'workers', 'warning',
                f'RQ worker {where} heartbeats as host {hb["host"]}, pid {hb["pid"]}: two workers share a name.',
                fix='Give every worker its own name (`netbox rqworker --name`), or leave RQ to name them.',
                worker=worker['name'],
            )
        else:
            guarded += 1
    names = {worker['name'] for worker in registered}
    for hb in heartbeats:
        if hb['name'] not in names and hb['age'] <= fresh_after:
            report.add('workers', 'info',
                       f'Worker {hb["name"] or hb["id"]} (host {hb["host"]}, pid {hb["pid"]}) heartbeats but no Redis '
                       f'of this process lists it: it serves another Redis, or Redis lost its registration.',
                       worker=hb['name'], host=hb['host'], pid=hb['pid'])
    if guarded == len(registered):
        if registered:
            report.add('workers', 'ok', f'All {guarded} RQ worker(s) run netbox-safejobs with a fresh heartbeat.')
        else:
            report.add('workers', 'warning', 'No RQ worker is registered: no job runs, no owed push is sent.',
                       fix='Start `netbox rqworker` (the netbox-rq service), with Restart=always.')


def _check_versions(report, settings, heartbeats):
    fresh_after = 3 * settings.heartbeat_interval
    others = [hb for hb in heartbeats if hb['age'] <= fresh_after and hb['version'] != __version__]
    for hb in others:
        report.add(
            'versions', 'error',
            f'Worker {hb["name"] or hb["id"]} (host {hb["host"]}, pid {hb["pid"]}) runs netbox-safejobs '
            f'{hb["version"] or "(unknown)"}; this process runs {__version__}.',
            fix=f'Finish the upgrade: install one release on every host (pip install netbox-safejobs=={__version__} '
                f'or the newer one), run `netbox migrate`, and restart the web server and every worker.',
            worker=hb['name'], host=hb['host'], pid=hb['pid'], worker_version=hb['version'],
        )
    if not others:
        report.add('versions', 'ok', f'This process and every heartbeating worker run netbox-safejobs {__version__}.')


def _check_worker_clocks(report, settings, heartbeats, registered):
    """
    A worker's clock against PostgreSQL's: each heartbeat carries the worker host's clock (``host_clock``) and is
    stamped with the database's (``seen``) by the same statement, so their difference is the skew, to the latency of
    one statement. Heartbeats of an earlier release have no host clock: RQ's record of the worker's birth (the host's
    clock, a few milliseconds after the first heartbeat) stands in, to about half a second.
    """
    fresh_after = 3 * settings.heartbeat_interval
    by_name = {hb['name']: hb for hb in heartbeats if hb['name'] and hb['age'] <= fresh_after}
    found = False
    for worker in registered:
        hb = by_name.get(worker['name'])
        if hb is None:
            continue
        if hb.get('skew') is not None:
            skew, precision = hb['skew'], 0.05
        elif worker['birth'] is not None and hb['started'] is not None:
            skew, precision = (worker['birth'] - hb['started']).total_seconds(), 0.5
        else:
            continue
        found = True
        _clock_finding(report, f'worker host {worker["host"] or "?"} (worker {worker["name"]})', skew,
                       precision=precision, host=worker['host'], worker=worker['name'])
    if not found:
        report.add('clock', 'info', 'Clock skew of worker hosts not available: no heartbeating worker is registered '
                   'in RQ.')


# --------------------------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------------------------

def _redis_config(connection, name):
    """A CONFIG GET value, or None where CONFIG is disabled or renamed (managed Redis services)."""
    from redis.exceptions import ResponseError

    try:
        value = connection.config_get(name)
    except ResponseError:
        return None
    return value.get(name) if isinstance(value, dict) else None


def _check_redis_settings(report, connection, label):
    info_memory = connection.info('memory')
    info_persistence = connection.info('persistence')
    policy = _redis_config(connection, 'maxmemory-policy') or info_memory.get('maxmemory_policy')
    if policy is None:
        report.add('redis', 'warning', f'{label}: maxmemory-policy cannot be read (CONFIG GET is disabled).',
                   fix='Check that the policy is noeviction (or volatile-*) where the service is configured.',
                   why=WHY_EVICTION)
    elif policy in EVICTION_SAFE or policy.startswith('volatile-'):
        report.add('redis', 'ok', f'{label}: maxmemory-policy {policy}.', policy=policy)
    else:
        report.add('redis', 'warning', f'{label}: maxmemory-policy is {policy}.',
                   fix='Set `maxmemory-policy noeviction` in redis.conf (and `CONFIG SET maxmemory-policy noeviction` '
                       'to apply it now); size maxmemory for the queues.', why=WHY_EVICTION, policy=policy)
    save = _redis_config(connection, 'save')
    aof = str(info_persistence.get('aof_enabled', '0')) == '1'
    if aof or save:
        how = ', '.join((['append-only file'] if aof else []) + ([f'RDB snapshots ({save})'] if save else []))
        report.add('redis', 'ok', f'{label}: persistence on ({how}).')
    elif save is None and int(info_persistence.get('rdb_saves', 0) or 0) > 0:
        report.add('redis', 'ok', f'{label}: persistence on (RDB snapshots taken).')
    elif save is None:
        report.add('redis', 'warning', f'{label}: persistence cannot be read (CONFIG GET is disabled) and the '
                   'append-only file is off.', fix='Check that RDB snapshots or the append-only file are on where the '
                   'service is configured.', why=WHY_PERSISTENCE)
    else:
        report.add('redis', 'warning', f'{label}: persistence is off (no RDB snapshots, no append-only file).',
                   fix='Set `appendonly yes` (or a `save` schedule) in redis.conf, and `CONFIG SET appendonly yes` to '
                       'apply it now.', why=WHY_PERSISTENCE)


def _check_redis(report):
    """RQ's registered workers of every Redis that answers, or None when a Redis does not answer."""
    registered = []
    complete = True
    try:
        groups = redis_groups()
    except Exception as e:
        report.add('redis', 'error', f'Cannot connect to the Redis of RQ_QUEUES: {_describe(e)}',
                   fix='Check REDIS["tasks"] in configuration.py.')
        return None
    for connection, queues in groups.values():
        label = _redis_label(connection, queues)
        try:
            connection.ping()
        except Exception as e:
            report.add('redis', 'error', f'{label} does not answer: {_describe(e)}',
                       fix='Start Redis, or correct REDIS["tasks"] in configuration.py. Jobs committed meanwhile are '
                           'kept as owed pushes and sent once it answers.')
            complete = False
            continue
        try:
            _check_redis_settings(report, connection, label)
            registered += compat.rq_workers(connection)
        except Exception as e:
            report.add('redis', 'error', f'{label}: {_describe(e)}', fix='Check Redis and its log.')
            complete = False
    return registered if complete else None


# --------------------------------------------------------------------------------------------------------------------
# backlog
# --------------------------------------------------------------------------------------------------------------------

BACKLOG_FIELDS = ('owed', 'oldest_owed_age', 'claimed', 'leases_without_heartbeat', 'stuck')


def backlog(using='default', settings=None):
    """
    The dispatch backlog, by the database's clock, in one statement (each part on a partial index of JobDispatch):

    - ``owed``: pushes the relay is to send (stamped owed, or written and unstamped for ``unknown_push_age``);
    - ``oldest_owed_age``: seconds since the oldest of them was written (0 when none);
    - ``claimed``: leases, i.e. jobs a worker claimed and runs;
    - ``leases_without_heartbeat``: leases whose worker and work horse have both not heartbeated for two
      ``heartbeat_interval`` (a worker may have died);
    - ``stuck``: leases the liveness check closes (``liveness.stale_leases``: neither heartbeated for ``stuck_after``).

    Its cost must not grow with the jobs that run normally (``/metrics`` is scraped every few seconds):

    - The owed rows are the unsent rows written before ``unknown_push_age`` (counted from the index of unsent rows
      alone) and the few written since and already stamped owed (the only part that reads the table).
    - A lease is silent only if its worker is silent too, so the leases are read worker by worker, and only for the
      workers without a fresh heartbeat. The workers holding leases are found by skipping through the lease index,
      one probe per worker (PostgreSQL 15 has no skip scan of its own); the leases of live workers, nearly all of
      them, are never read. (Joining every lease with the heartbeats read them all: docs/performance.md.)

    ``now()`` rather than ``clock_timestamp()``: the same database clock (read at the start of the transaction), but
    stable within the statement, so that PostgreSQL can use it in an index condition.
    """
    from .models import JobDispatch, WorkerHeartbeat

    settings = settings or get_settings()
    table, workers_table = JobDispatch._meta.db_table, WorkerHeartbeat._meta.db_table
    unsent = 'claimed IS NULL AND sent IS NULL'
    written_before = "now() - %(age)s * interval '1 second'"
    # stuck_after >= 3 x heartbeat_interval: a stuck lease is silent too, so one pass per worker counts both.
    stuck = ("greatest(d.claimed, d.heartbeat) < now() - %(stuck)s * interval '1 second' "
             "AND (w.id IS NULL OR w.seen < now() - %(stuck)s * interval '1 second')")
    sql = (
        f'WITH RECURSIVE lease_workers(id) AS ('
        f'(SELECT worker FROM {table} WHERE claimed IS NOT NULL AND worker IS NOT NULL ORDER BY worker LIMIT 1) '
        f'UNION ALL SELECT (SELECT worker FROM {table} WHERE claimed IS NOT NULL AND worker > k.id '
        f'ORDER BY worker LIMIT 1) FROM lease_workers k WHERE k.id IS NOT NULL) '
        f'SELECT old.n + young.n, coalesce(extract(epoch FROM now() - least(old.first, young.first)), 0), '
        f'(SELECT count(*) FROM {table} WHERE claimed IS NOT NULL), leases.silent, leases.stuck '
        f'FROM (SELECT count(*) AS n, min(created) AS first FROM {table} '
        f'WHERE {unsent} AND created < {written_before}) old, '
        f'(SELECT count(*) AS n, min(created) AS first FROM {table} '
        f'WHERE {unsent} AND created >= {written_before} AND owed IS NOT NULL) young, '
        f'(SELECT coalesce(sum(l.silent), 0)::bigint AS silent, coalesce(sum(l.stuck), 0)::bigint AS stuck '
        f'FROM lease_workers k LEFT JOIN {workers_table} w ON w.id = k.id, '
        f'LATERAL (SELECT count(*) AS silent, count(*) FILTER (WHERE {stuck}) AS stuck FROM {table} d '
        f"WHERE d.claimed IS NOT NULL AND d.worker = k.id AND greatest(d.claimed, d.heartbeat) "
        f"< now() - %(quiet)s * interval '1 second') l "
        f"WHERE k.id IS NOT NULL AND (w.id IS NULL OR w.seen < now() - %(quiet)s * interval '1 second')) leases"
    )
    params = {
        'age': settings.unknown_push_age, 'quiet': 2 * settings.heartbeat_interval, 'stuck': settings.stuck_after,
    }
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    values = dict(zip(BACKLOG_FIELDS, row, strict=True))
    values['oldest_owed_age'] = max(0.0, float(values['oldest_owed_age']))
    return values


def _check_backlog(report, settings, using):
    values = backlog(using, settings)
    owed, age = values['owed'], values['oldest_owed_age']
    if owed and age > OWED_AGE_WARNING:
        report.add('backlog', 'warning', f'{owed} owed push(es), the oldest written {age:.0f}s ago: no relay sends '
                   'them.', fix='Bring Redis back if it is down; start a worker with the plugin (the relay runs in '
                   'every rqworker), or run `netbox safejobs_recover`.', **values)
    else:
        report.add('backlog', 'ok' if not owed else 'info',
                   f'{owed} owed push(es)' + (f', the oldest written {age:.0f}s ago' if owed else '') +
                   f'; {values["claimed"]} job(s) running.', **values)
    if values['stuck']:
        report.add('backlog', 'warning', f'{values["stuck"]} job(s) stuck: their worker has not heartbeated for '
                   f'{settings.stuck_after}s.', fix='They are marked errored by the next worker loop with '
                   'stuck_job_detection on, or by `netbox safejobs_recover`; look at why their worker died.',
                   stuck=values['stuck'])
    elif values['leases_without_heartbeat']:
        report.add('backlog', 'info', f'{values["leases_without_heartbeat"]} running job(s) whose worker has not '
                   f'heartbeated for {2 * settings.heartbeat_interval}s; stuck after {settings.stuck_after}s.',
                   leases_without_heartbeat=values['leases_without_heartbeat'])


# --------------------------------------------------------------------------------------------------------------------
# adoption and chains
# --------------------------------------------------------------------------------------------------------------------

# Seconds the pages and the REST API reuse this process's last reading of ``job_coverage()`` (the command reads it
# afresh): it reads ``core_job`` whole, 90 ms at a million jobs (docs/performance.md).
COVERAGE_MAX_AGE = 60

_coverage = {}


def job_coverage(using='default', settings=None, max_age=0):
    """
    One statement over the jobs waiting or running (it reads ``core_job`` whole: NetBox indexes no job by status), or
    this process's reading of it from less than ``max_age`` seconds ago:

    - ``uncovered``: ``{status: count}`` of those without a dispatch row, saved more than ``unknown_push_age``
      seconds ago by the database's clock: what NetBox left without the plugin, which the plugin does not watch;
    - ``system_runs``: ``{name: count}`` of the waiting runs of each registered system job.
    """
    from core.models import Job

    from .models import JobDispatch

    kept = _coverage.get(using)
    if max_age and kept is not None and time.monotonic() - kept[0] < max_age:
        return kept[1]
    settings = settings or get_settings()
    sql = (
        f'SELECT j.status, '
        f'CASE WHEN j.object_type_id IS NULL AND j.object_id IS NULL AND j.name = ANY(%s) THEN j.name END, '
        f"j.created < clock_timestamp() - %s * interval '1 second' "
        f'AND NOT EXISTS (SELECT 1 FROM {JobDispatch._meta.db_table} d WHERE d.job_id = j.id), count(*) '
        f'FROM {Job._meta.db_table} j WHERE j.status = ANY(%s) GROUP BY 1, 2, 3'
    )
    waiting = list(CLAIMABLE_STATES)
    uncovered, system_runs = {}, {}
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [list(system_job_runners()), settings.unknown_push_age,
                             [*waiting, RUNNING]])
        for status, system_job, without_row, count in cursor.fetchall():
            if without_row:
                uncovered[status] = uncovered.get(status, 0) + count
            if system_job is not None and status in waiting:
                system_runs[system_job] = system_runs.get(system_job, 0) + count
    value = {'uncovered': uncovered, 'system_runs': system_runs}
    _coverage[using] = (time.monotonic(), value)
    return value


def _adoption_events(using):
    """Events of jobs adopted, and of jobs not adopted whose job still waits: on the index of kinds."""
    from .choices import RetryEventKindChoices as Kind
    from .models import RetryEvent

    events = RetryEvent.objects.using(using)
    return (events.filter(kind=Kind.KIND_ADOPTED).count(),
            events.filter(kind=Kind.KIND_NOT_ADOPTED, job__status__in=CLAIMABLE_STATES).count())


def _check_adoption(report, settings, coverage, using):
    uncovered = coverage['uncovered']
    total = sum(uncovered.values())
    adopted, listed = _adoption_events(using)
    done = f'{adopted} job(s) adopted so far (events `adopted`).' if adopted else ''
    if not total:
        report.add('adoption', 'ok', f'netbox-safejobs watches every job waiting or running. {done}'.strip(),
                   adopted=adopted)
        return
    parts = ', '.join(f'{uncovered[status]} {status}' for status in (*CLAIMABLE_STATES, RUNNING)
                      if uncovered.get(status))
    message = (f'{total} job(s) waiting or running that netbox-safejobs does not watch ({parts}): NetBox left them '
               f'without the plugin (before it was installed, or in a process without it).')
    if listed:
        message += f' {listed} of them cannot be sent again by the plugin (events `not adopted` say why).'
    report.add(
        'adoption', 'warning', f'{message} {done}'.strip(),
        fix='Workers adopt them when they start; `netbox safejobs_recover --adopt` does it now (add --dry-run to see '
            'what it would do). Run the jobs listed as `not adopted` again from NetBox, then delete them. A job '
            'running under a worker without the plugin is left to it: restart that worker with the plugin.',
        uncovered=uncovered, not_adopted=listed, adopted=adopted,
    )


def _check_chains(report, coverage):
    doubled = {name: count for name, count in coverage['system_runs'].items() if count > 1}
    for name, count in sorted(doubled.items()):
        report.add('chains', 'warning', f'System job "{name}" has {count} future runs: each schedules its own next '
                   f'one, so it runs {count} times per interval (NetBox #21167, #22232).',
                   fix='Workers merge them when they start; `netbox safejobs_recover` does it now.', job=name,
                   runs=count)
    if not doubled:
        report.add('chains', 'ok', 'Every system job has at most one future run.')


# --------------------------------------------------------------------------------------------------------------------

def may_view_health(request):
    """
    Who sees the report in the UI and the REST API: those NetBox shows its Background Tasks pages (staff users on
    NetBox 4.2 - 4.4, superusers from 4.5; the report names worker hosts and pids as those pages do), and users granted
    "view" on worker heartbeats (``netbox_safejobs | worker heartbeat``), e.g. a monitoring account.
    """
    user = getattr(request, 'user', None)
    if user is None or not user.is_authenticated:
        return False
    return compat.may_view_background_tasks(request) or user.has_perm('netbox_safejobs.view_workerheartbeat')


def check(using='default', coverage_max_age=0):
    """
    Run every check. Never raises: a failure of a check is a finding of level error. ``coverage_max_age``: the
    pages and the REST API take the count of jobs not watched from up to that many seconds ago (``job_coverage``).
    """
    report = HealthReport()
    settings = _check_settings(report) or validate_settings({})
    db_now = _check_database(report, using)
    registered = _check_redis(report)
    if db_now is None:
        report.findings.sort(key=lambda f: CHECKS.index(f.check))
        return report
    try:
        heartbeats = _heartbeats(using)
    except DatabaseError as e:
        report.add('workers', 'error', f'Cannot read worker heartbeats: {_describe(e)}',
                   fix='Run `netbox migrate netbox_safejobs`.')
        _close(using)
        return report
    if registered is None:
        report.add('workers', 'warning', 'Workers not compared with RQ: a Redis did not answer.',
                   fix='See the Redis finding.')
    else:
        _check_workers(report, settings, heartbeats, registered)
        _check_worker_clocks(report, settings, heartbeats, registered)
    _check_versions(report, settings, heartbeats)
    try:
        _check_backlog(report, settings, using)
    except DatabaseError as e:
        report.add('backlog', 'error', f'Cannot read the backlog: {_describe(e)}', fix='Check PostgreSQL.')
        _close(using)
    try:
        coverage = job_coverage(using, settings, max_age=coverage_max_age)
        _check_adoption(report, settings, coverage, using)
        _check_chains(report, coverage)
    except DatabaseError as e:
        report.add('adoption', 'error', f'Cannot read the jobs waiting or running: {_describe(e)}',
                   fix='Check PostgreSQL.')
        _close(using)
    report.findings.sort(key=lambda f: CHECKS.index(f.check))
    return report

"""
What the plugin costs: enqueue and start latencies, a worker's throughput as in production with the CPU of every
process and the commits per job (or, with ``--profile``, every statement), and one recovery pass over a large
``core_job``.
"""

import os
import shutil
import time
from pathlib import Path

from netbox_safejobs.testing.fixtures import set_mode

from .core import ROOT, WorkerPool, scenario
from .support import cleanup, enqueue_many, percentile, read_runs

__all__ = (
    'PROFILE_ROLES',
    'recovery_at_scale',
    'scenario_cost',
    'scenario_throughput',
    'statement_profile',
)


@scenario
def scenario_cost(ctx, mode, opts, runs_file):
    """Enqueue+commit latency, commit→start latency and throughput with K workers, on trivial jobs."""
    from core.models import Job
    from django.db import transaction

    from benchmarks.runners import HarnessJob

    # 1. enqueue + commit, no worker running.
    latencies = []
    for _ in range(opts.cost_jobs):
        start = time.perf_counter()
        with transaction.atomic():
            HarnessJob.enqueue()
        latencies.append((time.perf_counter() - start) * 1e3)
    cleanup()
    # 2. throughput: jobs queued first, then K workers in burst mode; first start to last completion.
    committed, _, _, _ = enqueue_many(opts.throughput_jobs, threads=2)
    pool = WorkerPool(ctx, mode, runs_file, burst=True)
    pool.wait(timeout=opts.timeout)
    times = Job.objects.filter(job_id__in=committed).values_list('started', 'completed')
    first = min(t[0] for t in times if t[0])
    last = max(t[1] for t in times if t[1])
    throughput = len(committed) / max((last - first).total_seconds(), 1e-6)
    cleanup()
    runs_file.unlink(missing_ok=True)
    # 3. commit → start: workers idle and listening; one job at a time, the next once the previous has started.
    pool = WorkerPool(ctx, mode, runs_file)
    start_latency = []
    try:
        pool.wait_ready()
        for _ in range(opts.latency_jobs):
            with transaction.atomic():
                job = HarnessJob.enqueue()
            committed_at = time.time()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, starts = read_runs(runs_file)
                if job.job_id in starts:
                    start_latency.append((starts[job.job_id] - committed_at) * 1e3)
                    break
                time.sleep(0.002)
    finally:
        pool.stop()
    return {
        'enqueue_commit_ms_p50': round(percentile(latencies, .5), 3),
        'enqueue_commit_ms_p99': round(percentile(latencies, .99), 3),
        'commit_to_start_ms_p50': round(percentile(start_latency, .5), 3),
        'commit_to_start_ms_p99': round(percentile(start_latency, .99), 3),
        'throughput_jobs_per_s': round(throughput, 1),
    }


def _proc_times(pid):
    """
    CPU seconds of a process, from /proc: (its own, its waited-for children's, of which in the kernel, the children's
    minor page faults). Zeros once it is gone.
    """
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0.0, 0
    tick = os.sysconf('SC_CLK_TCK')
    # proc(5) numbers the fields from 1, the pid and the name before ``)``: cminflt is 11, utime 14, stime 15, cutime
    # 16, cstime 17.
    cminflt = int(fields[8])
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick, cstime / tick, cminflt


def _postgres_cpu(cursor):
    """
    CPU seconds of the PostgreSQL server so far: the postmaster, every backend alive and every backend that ended
    (their time is the postmaster's children's time). ``None`` where its data directory or processes cannot be read.
    """
    try:
        cursor.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
        postmaster = int((Path(cursor.fetchone()[0]) / 'postmaster.pid').read_text().split()[0])
    except Exception:
        return None
    own, children = _proc_times(postmaster)[:2]
    total = own + children
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(stat.read_text().rsplit(')', 1)[1].split()[1]) == postmaster:
                total += _proc_times(stat.parent.name)[0]
        except (OSError, ValueError, IndexError):
            continue
    return total


def _commits(cursor):
    cursor.execute('SELECT pg_stat_clear_snapshot()')
    cursor.execute('SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()')
    return cursor.fetchone()[0]


# The parts of the per-job profile, in the order of the table: the roles a statement's process plays.
PROFILE_ROLES = ('enqueuing process', 'worker: main thread', 'worker: safejobs loop', 'work horse')


def statement_profile(rows, harness_pid, worker_pids, jobs):
    """
    Statements per job, and their time to reply (ms per job), by role and by verb and table, from the lines of
    ``statement_log``.
    """
    profile = {}
    for pid, ppid, thread, verb, table, micros in rows:
        if pid == harness_pid:
            role = 'enqueuing process'
        elif pid in worker_pids:
            role = 'worker: safejobs loop' if thread == 'netbox-safejobs' else 'worker: main thread'
        elif ppid in worker_pids:
            role = 'work horse'
        else:
            continue
        entry = profile.setdefault(f'{role} | {verb} {table}', [0, 0])
        entry[0] += 1
        entry[1] += micros
    return {key: {'statements': round(count / jobs, 3), 'ms': round(micros / 1e3 / jobs, 3)}
            for key, (count, micros) in sorted(profile.items())}


@scenario
def scenario_throughput(ctx, mode, opts, runs_file):
    """
    Throughput as in production: ``--workers`` rqworkers listening, one process enqueuing ``--throughput-jobs`` trivial
    jobs, one transaction each, as fast as it can while the workers drain them; from the first enqueue to the last
    completion. With it, per job: CPU of the workers' own processes (their main thread and the plugin's loop), of
    their work horses, of PostgreSQL and of the enqueuing process, and the commits PostgreSQL counted. With
    ``--profile``, every statement is logged instead (``statement_log``) and the run is not a timed one.
    """
    from core.models import Job
    from django.db import connection, transaction

    from benchmarks import statement_log
    from benchmarks.runners import HarnessJob

    log = ctx.workdir / f'statements-{mode}.log' if opts.profile else None
    profiles = ctx.workdir / f'cprofile-{mode}' if opts.profile and opts.cprofile else None
    env = ctx.env(mode, runs_file)
    if log:
        env[statement_log.LOG_VARIABLE] = str(log)
        env['PYTHONPATH'] = os.pathsep.join([str(ROOT / 'benchmarks' / 'statement_hook'), env['PYTHONPATH']])
        statement_log.install(str(log))
    if profiles:
        shutil.rmtree(profiles, ignore_errors=True)
        profiles.mkdir()
        env['SAFEJOBS_HORSE_CPROFILE'] = str(profiles)
    pool = WorkerPool(ctx, mode, runs_file, env=env)
    count = opts.throughput_jobs
    try:
        pool.wait_ready()
        time.sleep(2)  # past each worker loop's first tick and first sweep: what is measured is the steady state
        pids = {process.pid for process in pool.processes}
        with connection.cursor() as cursor:
            commits_before, postgres_before = _commits(cursor), _postgres_cpu(cursor)
        workers_before = [_proc_times(pid) for pid in pids]
        offset = log.stat().st_size if log and log.exists() else 0
        cpu_before, first = time.process_time(), time.time()
        committed = []
        for _ in range(count):
            with transaction.atomic():
                committed.append(HarnessJob.enqueue().job_id)
        enqueue_cpu = time.process_time() - cpu_before
        polls = 0
        deadline = time.monotonic() + opts.timeout
        while time.monotonic() < deadline:
            runs, _ = read_runs(runs_file)
            if len(runs) >= count:
                polls += 1
                if Job.objects.filter(job_id__in=committed, status='completed').count() == count:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f'{mode}: not every job completed within {opts.timeout} s')
        last = max(Job.objects.filter(job_id__in=committed).values_list('completed', flat=True))
        workers_after = [_proc_times(pid) for pid in pids]
        with connection.cursor() as cursor:
            postgres_after = _postgres_cpu(cursor)
    finally:
        pool.stop()
        if log:
            statement_log.install(None)
    time.sleep(1)  # the backends of the stopped workers report their last transactions
    with connection.cursor() as cursor:
        commits = _commits(cursor) - commits_before - polls - 2
    seconds = last.timestamp() - first
    outcome = {
        'throughput_jobs_per_s': round(count / seconds, 2),
        'worker_cpu_ms_per_job': round(sum(a[0] - b[0] for a, b in zip(workers_after, workers_before, strict=True))
                                       * 1e3 / count, 3),
        'horse_cpu_ms_per_job': round(sum(a[1] - b[1] for a, b in zip(workers_after, workers_before, strict=True))
                                      * 1e3 / count, 3),
        'horse_kernel_ms_per_job': round(sum(a[2] - b[2] for a, b in zip(workers_after, workers_before, strict=True))
                                         * 1e3 / count, 3),
        'horse_page_faults_per_job': round(sum(a[3] - b[3] for a, b in zip(workers_after, workers_before,
                                                                            strict=True)) / count),
        'postgres_cpu_ms_per_job': (round((postgres_after - postgres_before) * 1e3 / count, 3)
                                    if postgres_before is not None and postgres_after is not None else None),
        'enqueue_cpu_ms_per_job': round(enqueue_cpu * 1e3 / count, 3),
        'commits_per_job': round(commits / count, 2),
    }
    if log:
        outcome['statements'] = statement_profile(statement_log.read(log, offset), os.getpid(), pids, count)
        outcome['statements_per_job'] = round(sum(v['statements'] for v in outcome['statements'].values()), 2)
    if profiles:
        outcome['horse_profile'] = statement_log.horse_profile(str(profiles), count)
    return outcome


def recovery_at_scale(ctx, opts):
    """Time of one recovery pass with ``filler`` rows in core_job and 1,000 owed pushes (plugin only)."""
    from django.db import connection

    from netbox_safejobs.compat import job_field_values
    from netbox_safejobs.recovery import run_pass

    set_mode('plugin')
    with connection.cursor() as cursor:
        cursor.execute('SELECT count(*) FROM core_job')
        existing = cursor.fetchone()[0]
        filler = max(0, opts.core_job_rows - existing)
        # Column -> SQL value, for the NOT NULL columns this NetBox's Job has.
        columns = {
            'name': "'safejobs-harness-filler'", 'created': "now() - interval '1 day'", 'status': "'completed'",
            'job_id': 'gen_random_uuid()', 'error': "''",
            **job_field_values(queue_name="'default'", notifications="'always'", log_entries="'{}'"),
        }
        cursor.execute(
            f"INSERT INTO core_job ({', '.join(columns)}) "
            f"SELECT {', '.join(columns.values())} FROM generate_series(1, %s)", [filler],
        )
        cursor.execute('ANALYZE core_job')
        cursor.execute('SELECT count(*) FROM core_job')
        total = cursor.fetchone()[0]
    try:
        committed, _, _, _ = enqueue_many(opts.owed, threads=4)
        from django_rq import get_connection

        get_connection('default').flushdb()  # Redis lost every task: the pass owes them all again, then sends them
        start = time.perf_counter()
        report = run_pass()
        elapsed = time.perf_counter() - start
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM core_job WHERE name = 'safejobs-harness-filler'")
        cleanup()
    return {'core_job_rows': total, 'owed_pushes': opts.owed, 'pushed': len(report.pushed),
            'pass_seconds': round(elapsed, 3)}

"""
Workers and work horses that die, are stopped or are replaced: horses or whole workers SIGKILLed mid-job, rows deleted
under a running periodic job, an operator's stop, an upgrade from the first release with jobs in flight, what stock
NetBox leaves for the plugin's workers to adopt, and a simulated day of restarts for the chains of periodic jobs.
"""

import os
import subprocess
import time
import uuid
from pathlib import Path

from netbox_safejobs.testing.fixtures import netbox_command, set_mode
from netbox_safejobs.testing.processes import kill_pids

from .core import QUEUES, ROOT, WorkerPool, scenario
from .support import collect, enqueue_many, percentile, read_runs, wait_running, wait_until_settled

__all__ = (
    'LIVELY',
    'scenario_adoption',
    'scenario_chains',
    'scenario_deleted_mid_run',
    'scenario_stop',
    'scenario_upgrade_from_0_1',
    'scenario_worker_killed',
    'scenario_worker_sigkill',
)


@scenario
def scenario_deleted_mid_run(ctx, mode, opts, runs_file):
    """Periodic jobs whose rows are deleted (a queryset delete) while they run."""
    from core.models import Job

    from benchmarks.runners import HarnessJob

    jobs = [HarnessJob.enqueue(sleep=3, interval=60).job_id for _ in range(ctx.workers)]
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        wait_running(runs_file, jobs, interval=0.05)
        Job.objects.filter(job_id__in=jobs).delete()
        time.sleep(6)
    finally:
        pool.stop()
    successors = Job.objects.filter(name=HarnessJob.name, interval=60).exclude(job_id__in=jobs).count()
    return collect([], [], runs_file, deleted=jobs, extra={'deleted': len(jobs), 'next_runs_of_deleted': successors})


def _kill_mid_job(ctx, mode, runs_file, job_seconds, kill, survivors=0, within=30, poll=0.1, digits=2):
    """
    What the kill scenarios share: one job of ``job_seconds`` per worker, each committed in a transaction of its own;
    once every one runs, ``kill(pool, horses)`` (``horses``: {job UUID: pid of its work horse}); then, watched by the
    same pool or by ``survivors`` new workers, the seconds until none is left running, polled every ``poll`` s and
    rounded to ``digits`` (``None`` after ``within`` s). Returns (committed, horses, seconds).
    """
    from core.models import Job
    from django.db import transaction

    from benchmarks.runners import HarnessJob

    committed = []
    for _ in range(ctx.workers):
        with transaction.atomic():
            committed.append(HarnessJob.enqueue(sleep=job_seconds).job_id)
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        horses = wait_running(runs_file, committed)
        kill(pool, horses)
        killed_at = time.monotonic()
        if survivors:
            pool = WorkerPool(ctx, mode, runs_file, count=survivors)
        closed_after = None
        while time.monotonic() - killed_at < within:
            if not Job.objects.filter(job_id__in=committed, status='running').exists():
                closed_after = round(time.monotonic() - killed_at, digits)
                break
            time.sleep(poll)
    finally:
        pool.stop()
    return committed, horses, closed_after


@scenario
def scenario_worker_killed(ctx, mode, opts, runs_file):
    """The work horses SIGKILLed mid-job (what the OOM killer does); their workers live on."""
    committed, horses, closed_after = _kill_mid_job(
        ctx, mode, runs_file, job_seconds=30, kill=lambda pool, horses: kill_pids(horses.values()),
    )
    return collect(committed, [], runs_file, extra={'killed': len(horses), 'closed_s_after_kill': closed_after})


@scenario
def scenario_stop(ctx, mode, opts, runs_file):
    """
    An operator stops jobs that run for a long time. Stock NetBox has only the delete of a running job, which cancels
    its RQ task while its work horse runs on (NetBox #23138); the plugin stops it (``stopping.request_stop``).
    Measured: seconds from the request to the end of each work horse.
    """
    from core.models import Job

    from benchmarks.runners import HarnessJob
    from netbox_safejobs import liveness, stopping

    run_for = 20
    jobs = [HarnessJob.enqueue(sleep=run_for).job_id for _ in range(ctx.workers)]
    pool = WorkerPool(ctx, mode, runs_file)
    ended = {}
    try:
        horses = wait_running(runs_file, jobs)
        asked = time.monotonic()
        for job in Job.objects.filter(job_id__in=jobs):
            if mode == 'stock':
                job.delete()
            else:
                stopping.request_stop(job)
        while len(ended) < len(horses) and time.monotonic() - asked < run_for + 10:
            for job_uuid, pid in horses.items():
                if job_uuid not in ended and not liveness.pid_alive(pid):
                    ended[job_uuid] = time.monotonic() - asked
            time.sleep(0.01)
        time.sleep(2)
    finally:
        pool.stop()
    after = sorted(ended.values())
    return collect([] if mode == 'stock' else jobs, [], runs_file, deleted=jobs if mode == 'stock' else (), extra={
        'stopped': len(jobs),
        'horse_ended_s_max': round(after[-1], 2) if len(after) == len(horses) else None,
        'horse_ended_s_p50': round(percentile(after, 0.5) if len(after) > 1 else after[0], 2) if after else None,
        'horses_ran_on': sum(1 for s in after if s > 2.0) + len(horses) - len(after),
    })


@scenario
def scenario_worker_sigkill(ctx, mode, opts, runs_file):
    """Whole workers SIGKILLed with their work horses mid-job (a host lost); another worker is started."""
    committed, horses, closed_after = _kill_mid_job(
        ctx, mode, runs_file, job_seconds=60, kill=lambda pool, horses: pool.kill(), survivors=1, within=240,
        poll=0.5, digits=1,
    )
    return collect(committed, [], runs_file, extra={'killed': len(horses), 'closed_s_after_kill': closed_after})


# The first release, numbered 0.1.0 (its code is this repository's own history).
FIRST_RELEASE = 'c98a7b3'


FIRST_RELEASE_ENQUEUE = """
from benchmarks.runners import HarnessJob
for _ in range({count}):
    print(HarnessJob.enqueue().job_id, flush=True)
"""


@scenario
def scenario_upgrade_from_0_1(ctx, mode, opts, runs_file):
    """
    An upgrade from the first release (0.1.0) with jobs in flight: under 0.1.0, 10 jobs pushed and 5 whose push failed
    (Redis down); its workers stopped; Redis restarted in the maintenance window (empty); this release installed,
    ``netbox migrate``, one worker started. Every job must run, once. Plugin mode only: stock NetBox has no upgrade.
    """
    if mode == 'stock':
        return {'note': 'not applicable'}
    old = ctx.workdir / 'release-0.1.0'
    if not old.exists():
        old.mkdir()
        archive = subprocess.run(['git', '-C', str(ROOT), 'archive', FIRST_RELEASE, 'netbox_safejobs'],
                                 capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(old)], input=archive, check=True)
    new_env = ctx.env(mode, runs_file)
    old_env = dict(new_env, SAFEJOBS_PLUGINS_CONFIG='{}',
                   PYTHONPATH=os.pathsep.join([str(old), new_env['PYTHONPATH']]))

    def netbox(env, *argv, check=True):
        # Not from the repository root: `python -m` puts the working directory first on sys.path, ahead of
        # PYTHONPATH, and the old release would be shadowed by this checkout's package.
        result = subprocess.run(netbox_command(*argv), env=env, capture_output=True, text=True, timeout=900,
                                cwd=ctx.workdir)
        if check and result.returncode != 0:
            raise RuntimeError(f'netbox {" ".join(argv)} failed:\n{(result.stdout + result.stderr)[-3000:]}')
        return result

    def enqueue_old(count):
        out = netbox(old_env, 'shell', '--command', FIRST_RELEASE_ENQUEUE.format(count=count)).stdout
        return [uuid.UUID(line) for line in out.split() if len(line) == 36]

    # The database as 0.1.0 left it (the harness's own connection closed: the schema changes under it).
    from django.db import connection

    from netbox_safejobs.payload import is_signed

    connection.close()
    netbox(new_env, 'migrate', 'netbox_safejobs', '0001', '--no-input')
    try:
        out = netbox(old_env, 'shell', '--command', 'import netbox_safejobs.version as v; '
                     'print("VERSION", v.__version__, v.__file__)').stdout
        version = next(line.split()[1:] for line in out.splitlines() if line.startswith('VERSION '))
        pushed = enqueue_old(10)
        ctx.redis.stop()
        owed = enqueue_old(5)
        ctx.redis.start()  # the maintenance window: Redis restarted, empty
        with connection.cursor() as cursor:
            cursor.execute('SELECT payload FROM netbox_safejobs_jobdispatch WHERE job_uuid = ANY(%s)',
                           [pushed + owed])
            unsigned = sum(1 for (payload,) in cursor.fetchall() if payload is not None and not is_signed(payload))
        connection.close()
    finally:
        netbox(new_env, 'migrate', '--no-input')
    committed = pushed + owed
    pool = WorkerPool(ctx, mode, runs_file, count=1)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=30, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, extra={
        'first_release': f'{version[0]} ({FIRST_RELEASE}, loaded from {Path(version[1]).parent.parent.name}/)',
        'pushed_by_0_1': len(pushed), 'owed_by_0_1': len(owed), 'unsigned_by_0_1': unsigned,
    })


# Heartbeats every second and the shortest stuck bound the settings allow, where a scenario kills whole workers and
# waits for their jobs to be closed by the next ones (plugin only; stock NetBox has no liveness to set).
LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10}


def _delete_tasks(job_uuids):
    """Redis loses these tasks (and only these): their hashes and their places in queues and registries."""
    from django_rq import get_connection
    from rq.job import Job as RQJob

    connection = get_connection('default')
    for task in RQJob.fetch_many([str(u) for u in job_uuids], connection=connection):
        if task is not None:
            task.delete()


def _task_runnable(job_uuids):
    """The jobs whose task Redis holds runnable (queued, scheduled, deferred or started)."""
    from django_rq import get_connection
    from rq.job import Job as RQJob

    tasks = RQJob.fetch_many([str(u) for u in job_uuids], connection=get_connection('default'))
    return {uuid.UUID(task.id) for task in tasks
            if task is not None and task.get_status(refresh=False) in ('queued', 'scheduled', 'deferred', 'started')}


@scenario
def scenario_adoption(ctx, mode, opts, runs_file):
    """
    What stock NetBox leaves in the database, made by stock code paths in both modes (NetBox #22714): jobs left
    running by workers SIGKILLed mid-job, waiting jobs with their task in Redis, waiting jobs whose task Redis lost
    (jobs whose arguments were only in the task, and the system jobs' next runs). Then the mode's workers start once.
    Stock: what was stuck stays stuck. Plugin: each job decided once, at the workers' start-up (``adoption.py``).
    """
    from datetime import timedelta

    from core.models import Job
    from django.utils import timezone
    from netbox.registry import registry

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.choices import CLAIMABLE_STATES, RetryEventKindChoices
    from netbox_safejobs.jobs import system_job_runners
    from netbox_safejobs.models import JobDispatch, RetryEvent

    systems = system_job_runners()
    waiting_systems = Job.objects.filter(name__in=list(systems), object_type__isnull=True,
                                         status__in=CLAIMABLE_STATES)
    waiting_systems.delete()
    set_mode('stock')
    try:
        running = [HarnessJob.enqueue(sleep=120).job_id for _ in range(ctx.workers)]
        old = WorkerPool(ctx, 'stock', runs_file)
        try:
            wait_running(runs_file, running)
        finally:
            old.kill(forget=True)
        queued, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
        lost, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
        # Each system job's next run, as a stock worker leaves it: one waiting run (its task lost below, #22714).
        for name, runner in systems.items():
            if not waiting_systems.filter(name=name).exists():
                interval = registry['system_jobs'][runner]['interval']
                runner.enqueue(schedule_at=timezone.now() + timedelta(minutes=interval), interval=interval)
    finally:
        set_mode(mode)
    system_runs = list(waiting_systems.values_list('job_id', flat=True))
    _delete_tasks(lost + system_runs)
    left = {'running': len(running), 'waiting with a task': len(queued),
            'waiting, task lost': len(lost), 'system job runs, task lost': len(system_runs)}
    # Judged by their age: saved more than unknown_push_age (10 s) before the workers start.
    time.sleep(11)
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        pool.wait_ready()
        wait_until_settled(queued, timeout=opts.timeout, idle=15, pool=pool)
        time.sleep(3)
    finally:
        pool.stop()
    everything = running + queued + lost + system_runs
    rows = dict(Job.objects.filter(job_id__in=everything).values_list('job_id', 'status'))
    watched = set(JobDispatch.objects.filter(job_uuid__in=everything).values_list('job_uuid', flat=True))
    listed = set(RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_NOT_ADOPTED, job_uuid__in=everything)
                 .values_list('job_uuid', flat=True))
    runnable = _task_runnable(system_runs + lost)
    left_running = sum(1 for u in running if rows.get(u) == 'running')
    lost_unlisted = sum(1 for u in lost if rows.get(u) in CLAIMABLE_STATES and u not in listed | runnable)
    systems_dead = sum(1 for u in system_runs if rows.get(u) in CLAIMABLE_STATES
                       and u not in watched | runnable)
    adopted = RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_ADOPTED, job_uuid__in=everything).count()
    runs, _ = read_runs(runs_file)
    Job.objects.filter(job_id__in=system_runs).delete()
    RetryEvent.objects.filter(job_uuid__in=system_runs).delete()
    return {
        'left_by_stock': ', '.join(f'{count} {what}' for what, count in left.items()),
        'stuck_running': left_running,
        'queued_completed': sum(1 for u in queued if rows.get(u) == 'completed'),
        'lost_listed': len(listed & set(lost)),
        'lost_unlisted': lost_unlisted,
        'system_runs_without_task': systems_dead,
        'adopted_events': adopted,
        'unwatched': left_running + lost_unlisted + systems_dead,
        'runs': sum(runs.values()),
        'duplicate_runs': sum(1 for c in runs.values() if c > 1),
    }


def _make_due(pks):
    """Time passes: the waiting runs ``pks`` are due now, in the database and in RQ's registry of scheduled tasks."""
    from core.models import Job
    from django.utils import timezone
    from django_rq import get_queue
    from rq.registry import ScheduledJobRegistry

    now = timezone.now()
    runs = list(Job.objects.filter(pk__in=pks, status='scheduled'))
    Job.objects.filter(pk__in=[run.pk for run in runs]).update(scheduled=now)
    for name in QUEUES:
        queue = get_queue(name)
        registry = ScheduledJobRegistry(queue=queue)
        scheduled = set(registry.get_job_ids())
        for run in runs:
            if str(run.job_id) in scheduled:
                registry.schedule(queue.fetch_job(str(run.job_id)), now)


@scenario
def scenario_chains(ctx, mode, opts, runs_file):
    """
    A simulated day of worker restarts: ``--chain-cycles`` cycles, each a restart of every worker (NetBox's
    ``enqueue_once()`` of the system jobs at each start) after which the next run of every periodic job is due; every
    fourth restart, from the second, kills the workers with SIGKILL in the middle of the runs (an OOM kill, a host
    lost). At the start, each system job has two future runs, as NetBox 4.2 – 4.6.1 leave them (#21167, #22232),
    made by stock code paths in both modes, and due in the first cycle. Counted after the day: future runs per system
    job and per hourly job (a "chain"), runs, and rows left running.
    """
    from datetime import timedelta

    from core.models import Job
    from django.utils import timezone
    from netbox.registry import registry

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.choices import CLAIMABLE_STATES, RetryEventKindChoices
    from netbox_safejobs.jobs import system_job_runners
    from netbox_safejobs.models import RetryEvent

    systems = system_job_runners()
    names = [f'{HarnessJob.name}-chain-{n}' for n in range(2 * ctx.workers)]
    Job.objects.filter(name__in=list(systems), object_type__isnull=True,
                       status__in=CLAIMABLE_STATES).delete()
    started = timezone.now()
    set_mode('stock')
    try:
        for runner in systems.values():
            for minutes in (0, 5):
                runner.enqueue(schedule_at=started + timedelta(days=1, minutes=minutes),
                               interval=registry['system_jobs'][runner]['interval'])
    finally:
        set_mode(mode)
    for name in names:
        HarnessJob.enqueue(name=name, interval=60, sleep=2)
    extra_config = LIVELY if mode == 'plugin' else None
    try:
        for cycle in range(opts.chain_cycles):
            cycle_start = time.monotonic()
            pool = WorkerPool(ctx, mode, runs_file, extra_config=extra_config)
            kill = cycle % 4 == 1
            try:
                pool.wait_ready()
                time.sleep(2)  # the workers' first tick: the plugin's adoption and merge of chains
                waiting = Job.objects.filter(status__in=CLAIMABLE_STATES)
                due = list(waiting.filter(name__in=names).values_list('pk', flat=True))
                if cycle == 0:
                    due += list(waiting.filter(name__in=list(systems), object_type__isnull=True)
                                .values_list('pk', flat=True))
                _make_due(due)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    runs = Job.objects.filter(pk__in=due)
                    if kill and runs.filter(status='running').count() >= min(ctx.workers, len(due)):
                        break
                    if not kill and not runs.filter(status__in=(*CLAIMABLE_STATES, 'running')).exists():
                        break
                    time.sleep(0.2)
                if not kill:
                    # Workers run on: the plugin's liveness closes what the previous restart killed (stuck_after).
                    time.sleep(max(0.0, 20 - (time.monotonic() - cycle_start)))
            finally:
                if kill:
                    pool.kill(forget=True)
                else:
                    pool.stop()
        waiting = Job.objects.filter(status__in=CLAIMABLE_STATES)
        chain_runs = {name: waiting.filter(name=name).count() for name in names}
        system_runs = {name: waiting.filter(name=name, object_type__isnull=True).count() for name in systems}
        left_running = Job.objects.filter(name__in=names, status='running').count()
        ran = Job.objects.filter(created__gte=started, status__in=('completed', 'errored', 'failed'))
        runs, _ = read_runs(runs_file)
        return {
            'cycles': opts.chain_cycles,
            'system_jobs': len(systems),
            'system_job_runs': ran.filter(name__in=list(systems), object_type__isnull=True).count(),
            'system_job_future_runs': ', '.join(str(system_runs[name]) for name in systems),
            'chains': len(names),
            'chain_runs': ran.filter(name__in=names).count(),
            'chains_broken': sum(1 for count in chain_runs.values() if count == 0),
            'chains_doubled': sum(1 for count in chain_runs.values() if count > 1),
            'chain_rows_left_running': left_running,
            'extra_future_runs': sum(max(0, count - 1) for count in [*chain_runs.values(), *system_runs.values()]),
            'merge_events': RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_CHAIN_MERGED).count(),
            'duplicate_runs': sum(1 for c in runs.values() if c > 1),
        }
    finally:
        RetryEvent.objects.filter(job_name__in=names).delete()
        RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_CHAIN_MERGED).delete()
        Job.objects.filter(name__in=names).delete()
        Job.objects.filter(name__in=list(systems), object_type__isnull=True,
                           status__in=CLAIMABLE_STATES).delete()

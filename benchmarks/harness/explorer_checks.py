"""
The explorer's invariants, checked on the whole history of a schedule once its faults are healed and its work has
settled: what NetBox, the workers, the receiver and the runs file say, against what the users and the operator did.
"""

import time
import uuid
from collections import Counter

from .core import HARNESS_TAG
from .support import read_runs

__all__ = (
    'INVARIANTS',
    'check',
    'explain',
    'read_ends',
    'settled',
    'wait_settled',
)

# An operator's delete or stop and a worker's claim race; a run that started this long after the delete returned
# was not under way when it was made. The same for a webhook whose task was deleted.
GRACE = 2.0
# A job in these states is still owed a run.
OWED = ('pending', 'scheduled', 'running')

INVARIANTS = {
    'lost': 'a committed job the operator left alone is still waiting or running, and nothing will run it',
    'ran_twice': 'a job ran more than once',
    'rolled_back_ran': 'a job of a transaction that rolled back ran, or its row exists',
    'resurrected': 'a job the operator deleted has a row again',
    'ran_after_delete': 'a job ran after the operator deleted it (or its task)',
    'closed_while_alive': 'a job was closed while its work horse was still running it',
    'left_running': 'a job is left running with nothing running it',
    'chain_broken': 'the periodic job has no next run, or more than one',
    'webhook_twice': 'a webhook reached the receiver twice',
    'webhook_lost': 'a webhook never reached the receiver and is not listed for the operator',
    'webhook_after_delete': 'a webhook reached the receiver after the operator deleted its task',
    'script_lost': 'a script run accepted through the REST API never ran',
    'caller_exception': 'a caller got an exception (or an HTTP 5xx) the documentation does not promise (a script '
                        "run's 503, NetBox's answer when it sees no worker, is counted apart)",
    'sigterm_ignored': 'a worker did not exit on SIGTERM',
}


def read_ends(runs_file):
    """{job UUID: time its run() ended} from the runs file's ``.ends``."""
    ends = {}
    path = runs_file.with_name(runs_file.name + '.ends')
    if path.exists():
        for line in path.read_text().splitlines():
            job_uuid, at, _ = line.split()
            ends[uuid.UUID(job_uuid)] = float(at)
    return ends


def check(history, runs_file, workload, sigterm_ignored, evidence):
    """
    Every broken invariant as (name, detail), in the order of ``INVARIANTS``; into ``evidence``, what the database
    says of the first jobs each names.
    """
    from core.models import Job

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import JobDispatch

    found = []

    def broken(name, items):
        items = sorted(str(item) for item in items)
        if items:
            found.append((name, f'{len(items)}: {", ".join(items[:5])}{" ..." if len(items) > 5 else ""}'))
            for item in items[:2]:
                try:
                    evidence[item] = explain(uuid.UUID(item))
                except ValueError:
                    pass

    runs, starts = read_runs(runs_file)
    ends = read_ends(runs_file)
    rows = {row['job_id']: row for row in Job.objects.filter(name=HarnessJob.name).values(
        'job_id', 'status', 'scheduled', 'completed', 'interval')}
    by_operator = history.ended_by_operator()
    # Every job of the users was scheduled within the window: once settled, none is owed a run any more.
    broken('lost', [u for u in history.committed if u not in by_operator and u in rows and rows[u]['status'] in OWED])
    broken('ran_twice', [u for u, count in runs.items() if count > 1])
    broken('rolled_back_ran', [u for u in history.rolled_back if runs[u] or u in rows])
    broken('resurrected', [u for u in history.deleted if u in rows])
    deleted_at = {**history.tasks_deleted, **history.deleted}
    broken('ran_after_delete', [u for u, at in deleted_at.items() if u in starts and starts[u] > at + GRACE])
    closed = {u: row['completed'].timestamp() for u, row in rows.items()
              if row['status'] in ('errored', 'failed') and row['completed']}
    broken('closed_while_alive', [u for u, at in closed.items()
                                  if u not in history.stopped and u in ends and ends[u] > at + 1.0])
    broken('left_running', [u for u, row in rows.items() if row['status'] == 'running'])
    chain = [u for u, row in rows.items() if row['interval'] and row['status'] in ('scheduled', 'pending')]
    # Deleted, the chain ends; stopped, it goes on (the stop keeps the next run).
    ended = history.periodic in set(history.deleted) | set(history.tasks_deleted)
    if len(chain) > 1 or (not chain and not ended):
        broken('chain_broken', [f'{len(chain)} next runs'])

    received = Counter(name for name in workload.doors.receiver.names() if name in history.webhooks)
    broken('webhook_twice', [name for name, count in received.items() if count > 1])
    listed = JobDispatch.objects.filter(job__isnull=True, gave_up__isnull=False, name__contains=HARNESS_TAG).count()
    missing = [name for name in history.webhooks if name not in received and name not in history.webhooks_deleted]
    broken('webhook_lost', missing if len(missing) > listed else [])
    times = {}
    for body, at in zip(workload.doors.receiver.bodies, workload.doors.receiver.times, strict=True):
        times.setdefault(str(body.get('data', {}).get('name')), []).append(at)
    broken('webhook_after_delete', [name for name, at in history.webhooks_deleted.items()
                                    if any(t > at + GRACE for t in times.get(name, []))])
    scripts = workload.script_jobs()
    broken('script_lost', [j for j in scripts.filter(status__in=OWED).values_list('job_id', flat=True)]
           + ([f'{history.scripts_accepted - scripts.count()} without a row']
              if scripts.count() < history.scripts_accepted else []))
    broken('caller_exception', [f'{what} x{count}' for what, count in history.caller_errors.items()])
    broken('sigterm_ignored', sigterm_ignored)
    return found


def explain(job_uuid):
    """What the database says of a job a violation names: its row, its outbox row, its events, for the report."""
    from core.models import Job

    from netbox_safejobs.models import JobDispatch, RetryEvent

    row = Job.objects.filter(job_id=job_uuid).values('status', 'created', 'scheduled', 'started', 'completed',
                                                     'error').first()
    outbox = JobDispatch.objects.filter(job_uuid=job_uuid).values(
        'method', 'sent', 'owed', 'recoveries', 'failures', 'claimed', 'worker_pid', 'heartbeat', 'gave_up',
        'stop_requested').first()
    events = list(RetryEvent.objects.filter(job_uuid=job_uuid).order_by('time').values_list('time', 'kind', 'detail'))
    return {'job': row, 'outbox': outbox, 'events': [(f'{t:%H:%M:%S.%f}', kind, detail[:160])
                                                     for t, kind, detail in events[-8:]]}


def settled(history, workload):
    """
    Whether nothing is owed any more: every job the operator left alone ended (script runs too), every webhook
    arrived.
    """
    from core.models import Job

    pending = (Job.objects.filter(job_id__in=list(set(history.committed) - history.ended_by_operator()),
                                  status__in=OWED).exists()
               # A job the operator stopped (or deleted) while it ran is closed by its worker, or, when the worker
               # went with it, by the liveness check: still to wait for.
               or Job.objects.filter(job_id__in=list(history.ended_by_operator()), status='running').exists()
               or workload.script_jobs().filter(status__in=('pending', 'running')).exists())
    got = set(workload.doors.receiver.names())
    return not pending and all(name in got for name in history.webhooks if name not in history.webhooks_deleted)


def wait_settled(history, workload, pool, timeout, idle):
    """Wait until ``settled``, or nothing changed for ``idle`` s while every worker was up; whether it settled."""
    from core.models import Job

    deadline = time.monotonic() + timeout
    last, last_change = None, time.monotonic()
    while time.monotonic() < deadline:
        if settled(history, workload):
            return True
        state = (tuple(Job.objects.filter(job_id__in=list(history.committed)).values_list('status', flat=True)
                       .order_by('status')), len(workload.doors.receiver.names()))
        if state != last or not pool.ready():
            last, last_change = state, time.monotonic()
        elif time.monotonic() - last_change > idle:
            return False
        time.sleep(0.5)
    return False

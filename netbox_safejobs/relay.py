"""
The relay: sends the pushes the outbox owes RQ, each exactly once, as soon as Redis answers.

Runs once a second (``relay_interval``) in every ``rqworker``'s own loop (``worker_loop.py``), the process that is
always connected to Redis, and behind ``netbox safejobs_recover``. It needs no cron and no system job. Like the relays
of transactional outboxes (django-outbox-pattern, Procrastinate, Oban), it decides from PostgreSQL alone:

- a row stamped ``owed`` (its push failed; dispatch stamps it at once) is sent on the relay's next tick;
- a row left *written* for ``unknown_push_age`` seconds, measured with the database's clock, lost its pushing process
  between commit and push (SIGKILL, OOM, deploy): it is owed too;
- Redis that lost its data (restarted empty, flushed, failed over to an empty replica) is recognised by a marker key
  the relay keeps in it (``EPOCH_KEY``): when the key is gone, every sent, unclaimed row of that Redis's queues whose
  task is gone too is owed again, under an advisory lock, once. (A task pushed since the loss is still there: it is the
  only use the relay makes of what Redis holds, and it can only prevent a second send, never cause one to be
  skipped for a task Redis lacks.)

Rows are taken with ``FOR UPDATE SKIP LOCKED`` inside one transaction that pushes and stamps them ``sent``: any number
of relays on any number of hosts send each owed push once. A relay that dies mid-batch rolls back and its rows are
owed again. A stored push that is not ours (bad signature, truncated, unknown runner) errors its job with one event and
never blocks the rows behind it.
"""

import logging
import uuid
from dataclasses import dataclass, field

from django.db import connections, transaction

from . import backoff, events
from .choices import CLAIMABLE_STATES, RetryEventKindChoices
from .dispatch import ROW_COLUMNS, CapturedPush
from .payload import BadPayload, Push, unseal
from .queues import get_push_queue, redis_groups
from .settings import get_settings
from .webhooks import WEBHOOK_TASK

__all__ = (
    'EPOCH_KEY',
    'FAILED_TASK_DELAYS',
    'RelayReport',
    'check_redis',
    'redis_answers',
    'send_owed',
    'sweep_sent',
)

logger = logging.getLogger('netbox_safejobs.relay')

BATCH = 500

# A key the relay keeps in each Redis that holds RQ queues. Gone means Redis lost its data since the relay last looked.
EPOCH_KEY = 'netbox_safejobs:epoch'

# Any constant distinct from NetBox's own advisory lock keys (netbox.constants.ADVISORY_LOCK_KEYS, small integers).
_REOWE_LOCK = 0x5AFE_0B5


@dataclass
class RelayReport:
    pushed: list = field(default_factory=list)
    reowed: int = 0
    rejected: list = field(default_factory=list)
    cleaned: int = 0
    errors: list = field(default_factory=list)
    redis_down: bool = False
    # A Redis answered as another server than the last time this process looked (restarted, restored, failed over).
    server_changed: bool = False
    # The sweep looked at every sent, unclaimed row (its cursor is back at the start for every Redis).
    swept_all: bool = False
    # Tasks that failed in RQ before their claim every time they were sent: not sent again (``sweep_sent``).
    gave_up: list = field(default_factory=list)


def _is_connection_error(e):
    """
    Redis cannot take pushes now: unreachable, or refusing writes (out of memory, a read-only replica, loading). The
    row stays owed; only an error of the push itself (it cannot be serialized) is a reason to reject it.
    """
    from redis.exceptions import RedisError

    return isinstance(e, (RedisError, OSError))


def _task_statuses(connection, job_uuids):
    """The RQ status of each job's task (``None`` where Redis holds no task): one pipelined HGET per task."""
    from rq.job import Job as RQJob

    pipe = connection.pipeline(transaction=False)
    for job_uuid in job_uuids:
        pipe.hget(RQJob.key_for(str(job_uuid)), 'status')
    return {job_uuid: (status.decode() if isinstance(status, bytes) else status)
            for job_uuid, status in zip(job_uuids, pipe.execute(), strict=True)}


def _reowe(using, connection, queue_names):
    """
    Redis lost its data: every unclaimed row of its queues whose task Redis no longer holds is owed again. Returns
    how many rows. A task pushed since the loss is still there and is not sent twice.
    """
    from .models import JobDispatch

    table = JobDispatch._meta.db_table
    count = 0
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute('SELECT pg_advisory_xact_lock(%s)', [_REOWE_LOCK])
        if connection.get(EPOCH_KEY) is not None:
            return 0  # another relay got here first, and committed
        # Sent rows only. A written row's push is still on its way (it reaches the Redis we see now), or its process
        # died (owed after unknown_push_age); re-owing it would race its own push and send it twice.
        cursor.execute(
            f'SELECT id, job_uuid FROM {table} '
            f'WHERE claimed IS NULL AND sent IS NOT NULL AND queue_name = ANY(%s)',
            [list(queue_names)],
        )
        rows = cursor.fetchall()
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            statuses = _task_statuses(connection, [job_uuid for _, job_uuid in batch])
            lost = [row_id for row_id, job_uuid in batch if statuses[job_uuid] is None]
            if lost:
                cursor.execute(f'UPDATE {table} SET sent = NULL, owed = clock_timestamp() WHERE id = ANY(%s)',
                               [lost])
                count += cursor.rowcount
    # Only once the rows are owed for good: a relay that dies before its commit leaves the marker unset, and the next
    # relay looks again. A relay that waited on the lock meanwhile finds these rows owed, not sent, and sets it too.
    connection.set(EPOCH_KEY, uuid.uuid4().hex)
    if count:
        logger.warning('Redis of queues %s lost its data (restarted empty, flushed or failed over): %d unclaimed '
                       'job(s) owed again', ', '.join(queue_names), count)
    return count


# RQ task statuses from which the task still runs, or will: its row needs nothing from the relay.
_RUNNABLE = frozenset({'queued', 'started', 'scheduled', 'deferred'})
# And those in which RQ is done with it.
_ENDED = frozenset({'finished', 'failed', 'stopped', 'canceled'})

# A task RQ holds as queued, sent at least this long ago, that no queue holds any more was dropped on its way to a
# worker: a worker of several queues (NetBox's listen on three) pops a task with BLPOP, and until RQ marks the worker
# busy with it, a SIGTERM ends the worker's loop there (RQ's warm shutdown raises StopRequested unless busy): the task
# is in no queue and in no registry, and stays "queued" for ever. Found by the fault explorer. A task popped this very
# moment is sent again too, and runs once (the claim).
DROPPED_TASK_AGE = 30.0

# Where the sweep of sent rows goes on next time, per database: (sent, id) of the last row it looked at.
_sweep_cursor = {}

# The ``run_id`` each Redis gave the last time this process looked: a new one is a new server process.
_server_ids = {}


def _dropped(connection, rows, statuses):
    """
    The ids of the rows whose task RQ holds as queued while its queue does not (``DROPPED_TASK_AGE``): one pipelined
    ``LPOS`` per row sent that long ago. Only rows a claim protects (a job's, a webhook's): sent again while a worker
    does run the task after all, they still run once. Redis before 6.0.6 has no ``LPOS``: nothing is found there.
    """
    from redis.exceptions import ResponseError

    candidates = [row for row in rows if statuses[row['job_uuid']] == 'queued' and row['age'] >= DROPPED_TASK_AGE
                  and (row['job_id'] is not None or row['runner'] == WEBHOOK_TASK)]
    if not candidates:
        return set()
    pipe = connection.pipeline(transaction=False)
    for row in candidates:
        pipe.lpos(get_push_queue(row['queue_name']).key, str(row['job_uuid']))
    try:
        positions = pipe.execute()
    except ResponseError as e:
        logger.debug('tasks dropped on their way to a worker not looked for: %s', e)
        return set()
    return {row['id'] for row, position in zip(candidates, positions, strict=True) if position is None}


def _orphaned(using, rows, statuses):
    """
    The ids of the rows whose task RQ holds as started, sent more than ``stuck_after`` ago, while the job has not
    started: a work horse that took the task and was killed before its claim (its worker SIGKILLed while the database
    was away and the claim waited for it). RQ fails such a task only once its timeout has passed and a worker's
    maintenance runs, every 10 minutes. A live horse starts the job within its claim's retries, and a worker without
    the plugin starts it at once, so a job still waiting is not being run; sent again, it runs once (the claim).
    """
    from core.models import Job

    stuck_after = get_settings().stuck_after
    candidates = {row['job_id']: row['id'] for row in rows
                  if row['job_id'] is not None and statuses[row['job_uuid']] == 'started' and row['age'] >= stuck_after}
    if not candidates:
        return set()
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT id FROM {Job._meta.db_table} WHERE id = ANY(%s) AND status = ANY(%s)',
                       [list(candidates), list(CLAIMABLE_STATES)])
        return {candidates[job_id] for (job_id,) in cursor.fetchall()}


def _forget_failed(connection, queue_name, job_uuids):
    """Take re-owed tasks out of RQ's failed registry: the job runs again, it is no longer a failure to look at."""
    from rq.registry import FailedJobRegistry

    key = FailedJobRegistry(name=queue_name, connection=connection).key
    connection.zrem(key, *[str(job_uuid) for job_uuid in job_uuids])


# A task that fails in RQ before a worker claims it (it cannot be read there, or the database stayed away through the
# guard's retries) is sent again after these waits, counted from its last push: the first at the next sweep (a
# database blip is over by then), the others on a Fibonacci backoff; after the last, the relay gives up.
FAILED_TASK_DELAYS = (0.0, *backoff.delays('fibonacci', 10.0, 4, float('inf')))


def sweep_sent(report, using='default', limit=BATCH):
    """
    Sent is not safe; claimed is. Owe again every sent, unclaimed row whose task RQ no longer holds runnable: Redis
    restarted from a snapshot older than the push (its marker survived, so ``_reowe`` does not fire), an AOF that
    lost its last second, a failover to a replica that lagged, or a task failed in RQ before its claim (the database
    was away when a worker took it), or a task RQ holds as queued that no queue holds any more (dropped on its way to
    a worker that was stopped, ``DROPPED_TASK_AGE``), or a task RQ holds as started by a work horse that died before
    its claim (``_orphaned``). Any other task that is queued, started, scheduled or deferred is
    left alone; a push sent again for a task that runs after all starts once (the guard's claim).

    A task that failed before its claim is sent again only after ``FAILED_TASK_DELAYS`` (Fibonacci, from its last
    push), each time with RQ's failure record taken out of the failed registry; when it has failed that many times
    the relay gives up (``_give_up``): the job is closed as errored with RQ's reason, a webhook kept as given up for
    an operator, and RQ's record of the last failure kept. A webhook whose task finished unclaimed was sent by a
    worker without the plugin: its row is done with.

    Looks at up to ``limit`` rows per Redis, oldest first, going on from where the previous sweep stopped: a backlog
    is covered over several sweeps, never the same first rows each time. Takes no row lock: the UPDATE owes a row
    only while it is still sent and unclaimed. Sets ``report.swept_all`` once every row has been looked at.
    """
    from .models import JobDispatch

    table = JobDispatch._meta.db_table
    report.swept_all = True
    for connection, queue_names in redis_groups().values():
        cursor_key = (using, tuple(queue_names))
        after = _sweep_cursor.get(cursor_key)
        with connections[using].cursor() as cursor:
            cursor.execute(
                f'SELECT id, job_uuid, queue_name, sent, job_id, failures, '
                f'extract(epoch FROM clock_timestamp() - sent), runner, name FROM {table} '
                f'WHERE claimed IS NULL AND sent IS NOT NULL AND queue_name = ANY(%s) '
                f'AND (sent, id) > (%s, %s) ORDER BY sent, id LIMIT %s',
                [list(queue_names), after[0] if after else '-infinity', after[1] if after else 0, limit],
            )
            rows = [dict(zip(_SWEPT, values, strict=True)) for values in cursor.fetchall()]
            _sweep_cursor[cursor_key] = (rows[-1]['sent'], rows[-1]['id']) if len(rows) >= limit else None
            if _sweep_cursor[cursor_key] is not None:
                report.swept_all = False
            if not rows:
                continue
            statuses = _task_statuses(connection, [row['job_uuid'] for row in rows])
            # A task without a Job that RQ ran to an end unclaimed is done with: a webhook whose task finished was sent
            # by a worker without the plugin (a rolling upgrade), and owed again it would reach the receiver twice; a
            # push of another plugin's event-rule action (``event_actions.py``) is run as RQ runs it, whatever it
            # ended as. A job-less row is only owed again when Redis lost its task.
            delivered = [row['id'] for row in rows if row['job_id'] is None and (
                statuses[row['job_uuid']] == 'finished' if row['runner'] == WEBHOOK_TASK
                else statuses[row['job_uuid']] in _ENDED)]
            if delivered:
                cursor.execute(f'DELETE FROM {table} WHERE id = ANY(%s) AND claimed IS NULL AND job_id IS NULL',
                               [delivered])
                report.cleaned += cursor.rowcount
                logger.info('%d task(s) without a job run to their end by RQ unclaimed: done with, not sent again',
                            cursor.rowcount)
            dropped = _dropped(connection, rows, statuses) | _orphaned(using, rows, statuses)
            lost, failed_rows = [], []
            for row in rows:
                status = statuses[row['job_uuid']]
                if (status in _RUNNABLE and row['id'] not in dropped) or row['id'] in delivered:
                    continue
                if status != 'failed':
                    lost.append(row)
                elif row['failures'] >= len(FAILED_TASK_DELAYS):
                    failed_rows.append(row)
                elif row['age'] >= FAILED_TASK_DELAYS[row['failures']]:
                    lost.append(row)
            reowed = []
            if lost:
                cursor.execute(
                    f'UPDATE {table} SET sent = NULL, owed = clock_timestamp(), '
                    f'failures = failures + (CASE WHEN id = ANY(%s) THEN 1 ELSE 0 END) '
                    f'WHERE id = ANY(%s) AND claimed IS NULL AND sent IS NOT NULL RETURNING job_uuid, queue_name',
                    [[row['id'] for row in lost if statuses[row['job_uuid']] == 'failed'], [row['id'] for row in lost]],
                )
                reowed = cursor.fetchall()
        for row in failed_rows:
            _give_up(report, using, connection, row)
        report.reowed += len(reowed)
        failed = {}
        for job_uuid, queue_name in reowed:
            if statuses.get(job_uuid) == 'failed':
                failed.setdefault(queue_name, []).append(job_uuid)
        for queue_name, job_uuids in failed.items():
            _forget_failed(connection, queue_name, job_uuids)
        if reowed:
            logger.warning('%d sent job(s) of queues %s owed again: RQ no longer holds their task runnable (Redis '
                           'restored from an older snapshot, a lagging replica, the task failed before its claim, '
                           'it was dropped on its way to a worker that was stopped, or its work horse died before its '
                           'claim)',
                           len(reowed), ', '.join(queue_names))


# The columns of a row as the sweep reads it.
_SWEPT = ('id', 'job_uuid', 'queue_name', 'sent', 'job_id', 'failures', 'age', 'runner', 'name')


def _failure_reason(connection, job_uuid):
    """What RQ recorded of the task's last failure (its last line), or a plain phrase where it recorded nothing."""
    from rq.job import Job as RQJob

    try:
        result = RQJob.fetch(str(job_uuid), connection=connection).latest_result()
        text = (getattr(result, 'exc_string', None) or '').strip()
    except Exception:
        text = ''
    return text.splitlines()[-1][:500] if text else 'no reason recorded by RQ'


def _give_up(report, using, connection, row):
    """
    A task failed in RQ before its claim every time it was sent: the job is closed as errored with RQ's reason (no
    worker could start it), or a webhook kept as given up for an operator; one ``gave up`` event. RQ's failed
    registry keeps its record of the last failure.
    """
    from core.models import Job

    from .models import JobDispatch

    reason = _failure_reason(connection, row['job_uuid'])
    attempts = row['failures'] + 1
    detail = (f'Its task failed in RQ before a worker could claim it, {attempts} times ({reason}); not sent again. '
              f'RQ keeps the last failure in its failed registry.')
    table = JobDispatch._meta.db_table
    job = None
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        if row['job_id'] is None:
            cursor.execute(f'UPDATE {table} SET gave_up = clock_timestamp(), claimed = clock_timestamp() '
                           f'WHERE id = %s AND claimed IS NULL AND sent IS NOT NULL', [row['id']])
            if not cursor.rowcount:
                return
            detail += ' The webhook waits under Jobs in flight for Send again.'
        else:
            cursor.execute(f'DELETE FROM {table} WHERE id = %s AND claimed IS NULL AND sent IS NOT NULL',
                           [row['id']])
            if not cursor.rowcount:
                return
            job = Job.objects.using(using).select_for_update().filter(
                pk=row['job_id'], status__in=CLAIMABLE_STATES).first()
            if job is not None:
                job.terminate(status='errored', error=f'netbox-safejobs: {detail}')
        events.record(RetryEventKindChoices.KIND_GAVE_UP, job=job, job_uuid=row['job_uuid'],
                      job_name=row['name'] if job is None else job.name, runner=row['runner'],
                      queue=row['queue_name'], attempt=attempts, using=using, detail=detail)
    report.gave_up.append(row['job_uuid'])
    logger.warning('task %s failed before its claim %d times: not sent again (%s)', row['job_uuid'], attempts, reason)


def redis_answers():
    """Whether every Redis of the RQ queues answers a PING (never raises)."""
    try:
        for connection, _queue_names in redis_groups().values():
            connection.ping()
    except Exception:
        return False
    return True


def _marker_and_server(connection):
    """
    One round trip: the relay's marker and the server's ``run_id`` (``None`` where ``INFO`` is not allowed, as on some
    managed Redis services: a change of server is then found by the periodic sweep only).
    """
    pipe = connection.pipeline(transaction=False)
    pipe.get(EPOCH_KEY)
    pipe.info('server')
    marker, info = pipe.execute(raise_on_error=False)
    if isinstance(marker, Exception):
        raise marker
    return marker, (info.get('run_id') if isinstance(info, dict) else None)


def check_redis(report, using='default'):
    """
    Look at each Redis of the RQ queues: answering, still holding the relay's marker, and still the server it was.
    A Redis restored from a snapshot, or a replica promoted in a failover, keeps the marker but not the server's
    ``run_id``: ``report.server_changed`` then asks for a sweep (``sweep_sent``). Returns False when one does not
    answer (nothing can be sent to it now; the caller skips the database query).
    """
    ok = True
    for key, (connection, queue_names) in redis_groups().items():
        try:
            marker, server = _marker_and_server(connection)
            if marker is None:
                report.reowed += _reowe(using, connection, queue_names)
            previous = _server_ids.get(key)
            if server is not None:
                _server_ids[key] = server
                if previous is not None and previous != server:
                    report.server_changed = True
        except Exception as e:
            if not _is_connection_error(e):
                raise
            report.redis_down = True
            ok = False
    return ok


_OWED_CONDITION = ('d.claimed IS NULL AND d.sent IS NULL '
                   "AND (d.owed IS NOT NULL OR d.created < clock_timestamp() - %s * interval '1 second')")


def _anything_owed(using, age):
    """One statement, outside any transaction, on the partial index of unsent rows: is there anything to send?"""
    from .models import JobDispatch

    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT 1 FROM {JobDispatch._meta.db_table} d WHERE {_OWED_CONDITION} LIMIT 1', [age])
        return cursor.fetchone() is not None


# The owed rows as the relay reads them: the dispatch row, whether it is owed, its job's status and name (a webhook
# has no Job: no status, and its own name).
_SELECTED = ('id', *ROW_COLUMNS, 'failed', 'status', 'name')


def _waiting(row):
    """Whether the row's task is still to run: its job waits for a worker, or it is a webhook (``webhooks.py``)."""
    return row['job_id'] is None or row['status'] in CLAIMABLE_STATES


def _select_sql():
    from core.models import Job

    from .models import JobDispatch

    columns = ', '.join(f'd.{column}' for column in ('id', *ROW_COLUMNS))
    return (
        f'SELECT {columns}, d.owed IS NOT NULL, j.status, coalesce(j.name, d.name) '
        f'FROM {JobDispatch._meta.db_table} d LEFT JOIN {Job._meta.db_table} j ON j.id = d.job_id '
        f'WHERE {_OWED_CONDITION} '
        f'ORDER BY d.created, d.id LIMIT %s '
        f'FOR UPDATE OF d SKIP LOCKED'
    )


def _reject(using, row, reason):
    """A stored push that is not ours or cannot be read: the job is errored, one event, the row removed."""
    from core.models import Job

    from .models import JobDispatch

    job = None
    if row['job_id'] is not None:
        job = Job.objects.using(using).filter(pk=row['job_id'], status__in=CLAIMABLE_STATES).first()
    detail = (f'{reason}. Not unpickled and not sent; the job is marked errored. Enqueue it again if it should '
              f'run.')
    if job is not None:
        job.terminate(status='errored', error=f'netbox-safejobs: {reason}')
    JobDispatch.objects.using(using).filter(pk=row['id']).delete()
    return {'job_pk': row['job_id'] if job is not None else None, 'job_uuid': row['job_uuid'],
            'job_name': row['name'], 'runner': row['runner'], 'queue': row['queue_name'], 'detail': detail}


def _send_batch(report, using, age, limit, dry_run):
    """One transaction: take up to ``limit`` owed rows no other relay holds, push them, stamp them."""
    from .models import JobDispatch

    table = JobDispatch._meta.db_table
    recovered, rejected = [], []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(_select_sql(), [age, limit])
        rows = [dict(zip(_SELECTED, values, strict=True)) for values in cursor.fetchall()]
        if not rows:
            return 0
        if dry_run:
            report.pushed += [row['job_uuid'] for row in rows if _waiting(row)]
            return 0
        finished = [row['id'] for row in rows if not _waiting(row)]
        sent = []
        for row in rows:
            if not _waiting(row):
                continue
            try:
                push = unseal(row['payload'])
                if not isinstance(push, Push):
                    raise BadPayload('stored push holds no push')
            except BadPayload as e:
                rejected.append(_reject(using, row, str(e)))
                continue
            try:
                CapturedPush(row['queue_name'], push.method, push.args, push.kwargs).send()
            except Exception as e:
                if _is_connection_error(e):
                    # Redis went away (or refuses writes) mid-batch: what was sent is stamped, the rest stays owed.
                    report.redis_down = True
                    break
                rejected.append(_reject(using, row, f'stored push could not be sent: {events.describe(e)}'))
                continue
            sent.append(row['id'])
            report.pushed.append(row['job_uuid'])
            why = ('the push failed (Redis was down) or Redis lost the task' if row['failed'] else
                   'the process that committed it died before pushing')
            recovered.append({
                'job_pk': row['job_id'], 'job_uuid': row['job_uuid'], 'job_name': row['name'],
                'runner': row['runner'], 'queue': row['queue_name'], 'attempt': row['recoveries'] + 1,
                'detail': f'Owed push sent by the relay ({why}).',
            })
        if sent:
            cursor.execute(
                f'UPDATE {table} SET sent = clock_timestamp(), owed = NULL, recoveries = recoveries + 1 '
                f'WHERE id = ANY(%s)', [sent],
            )
        if finished:
            # Jobs that ended (or were started by a worker without the guard) no longer need their stored push.
            cursor.execute(f'DELETE FROM {table} WHERE id = ANY(%s)', [finished])
            report.cleaned += len(finished)
    events.record_many(RetryEventKindChoices.KIND_RECOVERED, recovered, using=using)
    events.record_many(RetryEventKindChoices.KIND_PAYLOAD_REJECTED, rejected, using=using)
    report.rejected += [entry['job_uuid'] for entry in rejected]
    return len(rows)


def send_owed(report=None, using='default', limit=BATCH, dry_run=False, sweep=False):
    """
    Send every owed push (in batches), unless Redis does not answer. With ``sweep``, or when a Redis is another server
    than last time, first owe again the sent rows whose task RQ lost (``sweep_sent``). Returns the ``RelayReport``.
    """
    report = report or RelayReport()
    age = get_settings().unknown_push_age
    try:
        if not dry_run and not check_redis(report, using):
            return report
        if (sweep or report.server_changed) and not dry_run:
            sweep_sent(report, using)
        # An idle relay stops here: one indexed statement, no transaction.
        if not _anything_owed(using, age):
            return report
        while _send_batch(report, using, age, limit, dry_run) >= limit and not report.redis_down and not dry_run:
            pass
    except Exception as e:
        # Reported, not logged here: the worker loop says it once while it lasts, the command prints it.
        report.errors.append(events.redact(events.describe(e)))
    return report

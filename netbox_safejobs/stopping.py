"""
Stopping a running job on an operator's request.

Deleting a running job in stock NetBox cancels its RQ task, and the work horse goes on running it (NetBox #23138,
#23157). Here the plugin knows from the job's lease which worker and which work horse run it, so a stop is:

1. **written on the lease**, in one statement that finds the lease of the running job: when (``stop_requested``, the
   database's clock), who (``stopped_by``), and whether a periodic job gets its next run (``stop_next_run``). A job
   with no lease has finished, or was never claimed by a guarded worker: the caller gets a clear outcome, never an
   error;
2. **told to the worker the way RQ tells one**, after the request commits: RQ's ``stop-job`` command on the channel of
   the worker named by the lease's heartbeat. It reaches a worker on another host, and needs no task hash in Redis;
3. **done by that worker** as RQ does it: the work horse is killed, RQ's failure handling notices the stop
   (``worker_loop.horse_ended``) and the liveness close ends the job ``errored`` through NetBox's own ``handle()``,
   naming the operator, with one ``stopped by operator`` event; a periodic job gets its next run unless the operator
   declined it. When the command does not reach the worker (Redis away or restored without the worker's keys, its
   subscription lost), the worker's loop finds the request on its own lease within ``relay_interval`` and stops the
   work horse itself (``stop_requested_horses``, ``stop_horse``).

A job whose worker died is closed by the liveness check within ``stuck_after``; the stop request on its lease makes
that close name the operator too. Nothing is re-created: the work horse saves the job only while its lease exists
(``guard._update_only``).
"""

import logging
import os
import signal
from dataclasses import dataclass

from core.choices import JobStatusChoices
from django.db import connections, router, transaction

from . import compat, events
from .choices import RUNNING, RetryEventKindChoices
from .queues import get_push_queue

__all__ = (
    'StopOutcome',
    'StopResult',
    'kill_horse',
    'request_stop',
    'send_stop_command',
    'stop_horse',
    'stop_requested_horses',
    'stop_when_deleted',
)

logger = logging.getLogger('netbox_safejobs.stopping')


class StopOutcome:
    # The request is on the lease and the worker was told (or will see it on its own lease).
    STOPPING = 'stopping'
    # A stop of this run was already requested.
    ALREADY = 'already_stopping'
    # The job is not running (finished, or never started): nothing to stop.
    NOT_RUNNING = 'not_running'
    # Running in a process that is not a worker (``netbox runscript``, an immediate job): only that process can end it.
    NO_WORKER = 'no_worker'
    # Running, but claimed by no guarded worker (a worker without the plugin): asked of RQ alone.
    NOT_GUARDED = 'not_guarded'


@dataclass(frozen=True)
class StopResult:
    outcome: str
    message: str
    job_id: int | None = None
    worker: str = ''
    # Whether RQ's stop command reached Redis (False: the worker's loop stops the horse from the lease).
    commanded: bool = False

    @property
    def accepted(self):
        return self.outcome in (StopOutcome.STOPPING, StopOutcome.ALREADY)


def _tables():
    from .models import JobDispatch, WorkerHeartbeat

    return JobDispatch._meta.db_table, WorkerHeartbeat._meta.db_table


def _who(user):
    if user is None or not getattr(user, 'is_authenticated', False):
        return ''
    return user.get_username()[:150]


def request_stop(job, user=None, next_run=True, using=None):
    """
    Ask for the running ``job`` (a ``core.Job``) to be stopped. Returns a ``StopResult`` whose ``message`` an operator
    reads; never raises for a job in any state. Permissions are the caller's to check.
    """
    using = using or job._state.db or router.db_for_write(type(job))
    table, workers_table = _tables()
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(
            f'SELECT d.id, d.stop_requested IS NOT NULL, d.worker, d.worker_host, d.worker_pid, d.queue_name, w.name '
            f'FROM {table} d LEFT JOIN {workers_table} w ON w.id = d.worker '
            f'WHERE d.job_id = %s AND d.claimed IS NOT NULL FOR UPDATE OF d',
            [job.pk],
        )
        lease = cursor.fetchone()
        if lease is None:
            return _without_lease(job, using)
        lease_id, already, worker_id, host, horse_pid, queue_name, worker_name = lease
        where = f'worker {worker_name or host or "?"}, work horse pid {horse_pid or "?"}'
        if already:
            return StopResult(StopOutcome.ALREADY, f'A stop of job {job} was already requested ({where}).',
                              job.pk, worker_name or '')
        if worker_id is None:
            return StopResult(
                StopOutcome.NO_WORKER,
                f'Job {job} runs in a process that is not a worker (netbox runscript or an immediate job, host '
                f'{host or "?"}, pid {horse_pid or "?"}): stop that process.', job.pk)
        cursor.execute(
            f'UPDATE {table} SET stop_requested = clock_timestamp(), stopped_by = %s, stop_next_run = %s '
            f'WHERE id = %s', [_who(user), bool(next_run), lease_id])
    commanded = send_stop_command(queue_name, worker_name, job.job_id)
    how = ('its worker was told to stop it' if commanded else
           "Redis did not take the stop command: the worker's own check stops it within a few seconds")
    logger.warning('job %s: stop requested by %s (%s); %s', job.job_id, _who(user) or 'an operator', where, how)
    return StopResult(StopOutcome.STOPPING, f'Stopping job {job} ({where}): {how}.', job.pk, worker_name or '',
                      commanded)


def _without_lease(job, using):
    """The outcome for a job that has no lease: finished, waiting, or run by a worker without the plugin."""
    status = type(job)._base_manager.using(using).filter(pk=job.pk).values_list('status', flat=True).first()
    if status is None:
        return StopResult(StopOutcome.NOT_RUNNING, f'Job {job} no longer exists: nothing to stop.', job.pk)
    if status != RUNNING:
        label = dict(JobStatusChoices).get(status, status)
        return StopResult(StopOutcome.NOT_RUNNING, f'Job {job} is not running (its status is {label}): nothing to '
                                                   f'stop.', job.pk)
    # Running without a lease: claimed by a worker that does not run the guard. RQ's own stop is all there is.
    try:
        from rq.command import send_stop_job_command

        queue = get_push_queue(compat.rq_queue_name(job))
        send_stop_job_command(queue.connection, str(job.job_id), serializer=queue.serializer)
    except Exception as e:
        return StopResult(StopOutcome.NOT_GUARDED,
                          f'Job {job} is not run by a worker with netbox-safejobs, and RQ could not stop it '
                          f'({events.redact(events.describe(e))}). Stop its worker, or wait for it to end.', job.pk)
    return StopResult(StopOutcome.NOT_GUARDED,
                      f'Job {job} is not run by a worker with netbox-safejobs: RQ was asked to stop it. NetBox leaves '
                      f'such a job running in its list until the next start of a worker with netbox-safejobs closes '
                      f'it.', job.pk, commanded=True)


def send_stop_command(queue_name, worker_name, job_uuid):
    """RQ's ``stop-job`` command to ``worker_name`` for the task ``job_uuid``. Whether Redis took it; never raises."""
    if not worker_name:
        return False
    try:
        from rq.command import send_command

        send_command(get_push_queue(queue_name or 'default').connection, worker_name, 'stop-job',
                     job_id=str(job_uuid))
        return True
    except Exception as e:
        logger.warning('job %s: stop command not sent to worker %s (%s); its loop stops it from the lease', job_uuid,
                       worker_name, events.redact(events.describe(e)))
        return False


def stop_requested_horses(identity, using='default'):
    """``(task id, work horse pid)`` of this worker's leases whose job an operator asked to stop. One indexed query."""
    if identity is None:
        return []
    table, _ = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT job_uuid, worker_pid FROM {table} '
                       f'WHERE worker = %s AND claimed IS NOT NULL AND stop_requested IS NOT NULL', [identity.id])
        return [(str(task_id), pid) for task_id, pid in cursor.fetchall()]


def stop_horse(worker, task_id, horse_pid):
    """
    In the worker: stop the work horse running ``task_id`` as RQ's ``stop-job`` command does (the stop is recorded
    on the worker, so RQ's failure handling tells it from a death), if that horse is still the worker's. Whether it
    was stopped here.
    """
    if not horse_pid or getattr(worker, 'horse_pid', None) != horse_pid:
        return False
    worker._stopped_job_id = task_id
    kill_horse(horse_pid)
    return True


def kill_horse(horse_pid):
    """
    SIGKILL the work horse ``horse_pid`` and its process group, as RQ's ``Worker.kill_horse()`` does, but for the pid
    that was checked: RQ's reads ``worker.horse_pid`` again, and this loop runs beside the worker's main thread. If
    that horse ended in between, RQ's sees pid 0 and ``os.getpgid(0)`` is the worker's own group (the worker is
    killed); if the next job's horse was forked, that one is killed. A horse not yet in a group of its own (RQ calls
    ``os.setpgrp()`` just after the fork) is killed alone, never the worker's group with it.
    """
    try:
        group = os.getpgid(horse_pid)
        if group == os.getpgid(0):
            os.kill(horse_pid, signal.SIGKILL)
        else:
            os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        # Ended (and reaped) since it was checked: nothing to stop.
        pass


def stop_when_deleted(job, using):
    """
    Inside the transaction that deletes the running ``job``: once it commits, its work horse is stopped (stock NetBox
    only cancels the RQ task, and the horse runs on, NetBox #23138), and one event says so. Nothing when the job has
    no lease held by a worker. The guard would otherwise end the run quietly only when the job next saves.
    """
    table, workers_table = _tables()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'SELECT d.queue_name, w.name, d.worker_host, d.worker_pid, d.runner FROM {table} d '
            f'JOIN {workers_table} w ON w.id = d.worker WHERE d.job_id = %s AND d.claimed IS NOT NULL',
            [job.pk],
        )
        lease = cursor.fetchone()
    if lease is None:
        return False
    queue_name, worker_name, host, horse_pid, runner = lease
    who = _who(_current_user())
    snapshot = {'job_uuid': job.job_id, 'job_name': job.name, 'runner': runner, 'queue': queue_name}

    def stop():
        commanded = send_stop_command(queue_name, worker_name, job.job_id)
        then = ('its work horse was stopped' if commanded else
                'the stop command did not reach Redis, so its work horse runs to its end; nothing saves it back')
        events.record(RetryEventKindChoices.KIND_OPERATOR_STOPPED, using=using, **snapshot,
                      detail=f'Deleted while it ran, by {who or "an operator"} (worker {worker_name or host}, work '
                             f'horse pid {horse_pid or "?"}): {then}.')

    transaction.on_commit(stop, using=using, robust=True)
    return True


def _current_user():
    """The user of the request being served, if any (NetBox keeps it for change logging)."""
    try:
        from netbox.context import current_request

        request = current_request.get()
    except (ImportError, LookupError):
        return None
    return getattr(request, 'user', None)

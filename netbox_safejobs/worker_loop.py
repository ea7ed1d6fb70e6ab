"""
The loop every ``rqworker`` runs beside its work: the relay of owed pushes, the worker's heartbeat, and the closing of
jobs whose worker or work horse died. Nothing depends on a system job that itself lives in Redis, so a Redis that
lost its data, or a killed recovery job, cannot switch delivery or liveness off.

A daemon thread started when RQ's ``Worker.work()`` starts and stopped when it returns (``patches.py`` wraps both,
and RQ's ``monitor_work_horse()``). Each tick, every ``relay_interval`` seconds:

1. the relay (``relay.send_owed``): one Redis ``GET`` per Redis and, when Redis answers, one indexed query that finds
   nothing when nothing is owed; the same ``GET`` carries Redis's ``INFO server``, whose ``run_id`` tells a Redis
   that came back as another server (restored from a snapshot, a replica promoted). The sweep, which owes again the
   sent, unclaimed rows whose task RQ no longer holds runnable (``relay.sweep_sent``), runs on the first tick, when
   a Redis is another server, after a tick that failed (the database or Redis was away: a task may have failed
   before its claim), until it has covered every row, and otherwise every ``SWEEP_INTERVAL`` seconds as a backstop.
   While Redis does not answer, the loop asks it every ``REDIS_POLL`` seconds instead (no database query), so that
   the owed pushes of an outage leave within a fraction of a second of its end;
2. every ``heartbeat_interval`` seconds, the worker's heartbeat (one statement), the stale-worker check
   (``liveness.close_stale``, one indexed query when nothing is stale) and the check of its own work horses
   (``liveness.close_dead_horses``, one indexed query). The stale-worker check runs only once the loop itself has
   worked for ``stuck_after`` seconds without a failure (``WorkerLoop.may_judge``): after a database outage every
   heartbeat is stale, and none of them means a dead worker.

   Each heartbeat too, the scheduled tasks no RQ scheduler moved in time are moved to their queue
   (``scheduled.enqueue_overdue``, one ``ZRANGEBYSCORE`` per queue of the worker);
3. while a work horse runs, the operators' stop requests on this worker's leases (``stopping.stop_requested_horses``,
   one indexed query): the backstop of RQ's stop command, which a Redis that is away or lost the worker's keys does
   not deliver;
4. in a guarded worker, on its first tick (and on the next ones until it has worked once): the adoption of the jobs
   NetBox left waiting or running without the plugin, then the merge of periodic jobs with more than one future run
   (``adoption.adopt_and_merge``; each reads ``core_job`` once). Again after ``unknown_push_age`` seconds while a job
   was too recent to judge, and every ``stuck_after`` seconds while a job a live stock worker runs is left to it.

The thread has its own database connection (Django's connections are per thread) and never touches the worker's
Redis connection objects. Work horses fork from the worker's main thread and run none of this; that thread keeps no
database session across a fork (``sessions.py``).
"""

import logging
import threading
import time

from django.db import close_old_connections, connections

from . import adoption, compat, guard, liveness, relay, scheduled, sessions, stopping, workers
from .choices import RetryEventKindChoices
from .queues import bound_redis_retries
from .settings import get_settings

__all__ = (
    'WorkerLoop',
    'horse_ended',
    'monitored',
    'start',
    'stop',
)

logger = logging.getLogger('netbox_safejobs.worker_loop')

# Seconds between two looks at a Redis that does not answer (a PING; no database query).
REDIS_POLL = 0.1

# Seconds between two backstop sweeps of the sent, unclaimed rows against what RQ holds (``relay.sweep_sent``). The
# faults the sweep exists for are seen and swept at once (a new Redis server, a tick that failed); the backstop is for
# what no tick of this worker saw: another worker's claim that failed while this loop's ticks went through. It reads
# the whole backlog of sent rows (up to 500 a time) and asks Redis for each task, in every worker: not every tick.
SWEEP_INTERVAL = 30.0


class WorkerLoop(threading.Thread):

    def __init__(self, identity, settings, worker=None):
        super().__init__(name='netbox-safejobs', daemon=True)
        self.identity = identity
        self.settings = settings
        # The RQ worker this loop runs in: its work horse is the one an operator's stop may ask this loop to end.
        self.worker = worker
        self._stopping = threading.Event()
        self._failing = False
        self.redis_down = False
        # Since when (monotonic) every tick of this loop has worked: the time over which it may judge others' staleness.
        self.working_since = None
        # A sweep is wanted on the first tick, after a failed tick, and when a Redis is another server, until it has
        # covered every sent row; otherwise at ``_next_sweep``.
        self._sweep_wanted = True
        self._next_sweep = 0.0
        # When (monotonic) the adoption of what NetBox left without the plugin is due: on the first tick of a guarded
        # worker, again while jobs were too recent to judge or ran under a live stock worker; None once all is decided.
        self._adopt_at = 0.0 if identity.guard else None

    def stop(self, timeout=10):
        self._stopping.set()
        self.join(timeout)

    def tick(self, beat):
        """
        One tick. Each part runs whatever the others do (a heartbeat that fails must not hold back the relay); the
        first failure is raised at the end, for ``run()`` to say once.
        """
        failures = []
        parts = [('heartbeat', self._beat)] if beat else []
        if self._adopt_at is not None and time.monotonic() >= self._adopt_at:
            parts.append(('adoption', self._adopt))
        parts.append(('relay', self._relay))
        if monitored and self.worker is not None:
            parts.append(('stops', self._stops))
        if beat and self.settings.stuck_job_detection:
            parts.append(('liveness', self._liveness))
        if beat and self.identity.queues:
            parts.append(('scheduled', self._scheduled))
        for name, part in parts:
            try:
                part()
            except Exception as e:
                failures.append((name, e))
        if failures:
            name, error = failures[0]
            raise RuntimeError(f'{name}: {error}') from error

    def may_judge(self, now=None):
        """
        Whether this loop may close jobs whose worker stopped heartbeating: only once it has itself reached the database
        without a failure for ``stuck_after`` seconds. A heartbeat that went stale while the database was away (a
        restart, a failover, a partition) says nothing about its worker, which could not write it either; by then every
        live worker has heartbeated again. Staleness across an outage is not death.
        """
        now = time.monotonic() if now is None else now
        return self.working_since is not None and now - self.working_since >= self.settings.stuck_after

    def _beat(self):
        workers.beat(self.identity)

    def _adopt(self):
        """
        The jobs NetBox left waiting or running without the plugin, adopted, then the chains of periodic jobs merged
        (``adoption.adopt_and_merge``). Nothing is decided while Redis does not answer: tried again on the next tick,
        as after an error.
        """
        now = time.monotonic()
        report = adoption.adopt_and_merge(close_running=self.settings.stuck_job_detection)
        if report.errors:
            raise RuntimeError('; '.join(report.errors))
        if report.redis_down:
            return
        if report.deferred:
            self._adopt_at = now + self.settings.unknown_push_age
        elif report.vouched:
            # A stock worker runs them: looked at again, and closed once that worker is gone (RQ forgets a worker that
            # died within its worker_ttl).
            self._adopt_at = now + self.settings.stuck_after
        else:
            self._adopt_at = None

    def _relay(self):
        now = time.monotonic()
        sweep = self._sweep_wanted or now >= self._next_sweep
        report = relay.send_owed(sweep=sweep)
        self.redis_down = report.redis_down
        if report.server_changed:
            logger.warning('a Redis of the RQ queues is another server than before (restarted, restored or failed '
                           'over): sweeping the sent jobs against what it holds')
        if (sweep or report.server_changed) and not report.redis_down and not report.errors:
            self._sweep_wanted = not report.swept_all
            self._next_sweep = now + SWEEP_INTERVAL
        elif report.redis_down or report.errors:
            self._sweep_wanted = True
        if report.pushed or report.reowed or report.rejected:
            logger.warning('relay: sent %d owed push(es)%s%s', len(report.pushed),
                           f', {report.reowed} owed again after Redis lost its data' if report.reowed else '',
                           f', {len(report.rejected)} rejected' if report.rejected else '')
        if report.errors:
            raise RuntimeError('; '.join(report.errors))

    def _stops(self):
        # The backstop of RQ's stop command (``stopping.py``): only while a work horse runs, one indexed query.
        for task_id, horse_pid in stopping.stop_requested_horses(self.identity):
            if stopping.stop_horse(self.worker, task_id, horse_pid):
                logger.warning('job %s: stopped its work horse %s, as an operator asked', task_id, horse_pid)

    def _liveness(self):
        # Its own dead work horses, always (a fact about this host's processes); other workers' staleness only once
        # this loop may judge it.
        closed = liveness.close_stale() if self.may_judge() else liveness.LivenessReport()
        if closed.closed:
            logger.warning('closed %d job(s) whose worker stopped heartbeating', len(closed.closed))
        dead = liveness.close_dead_horses(self.identity, monitored=frozenset(monitored))
        if dead:
            logger.warning('closed %d job(s) whose work horse died', len(dead))
        if closed.errors:
            raise RuntimeError('; '.join(closed.errors))

    def _scheduled(self):
        scheduled.enqueue_overdue(self.identity.queues)

    def run(self):
        next_beat = 0.0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                beat = now >= next_beat
                try:
                    self.tick(beat)
                    if beat:
                        next_beat = now + self.settings.heartbeat_interval
                    if self.working_since is None:
                        self.working_since = now
                    if self._failing:
                        logger.warning('worker loop working again')
                        self._failing = False
                except Exception:
                    # The database or Redis is away: say it once, keep trying every tick. A task taken meanwhile may
                    # have failed in RQ before its claim: sweep once it works again.
                    self.working_since = None
                    self._sweep_wanted = True
                    if not self._failing:
                        logger.exception('worker loop tick failed; trying again every %ss (said once while it '
                                         'lasts)', self.settings.relay_interval)
                        self._failing = True
                    close_old_connections()
                    try:
                        connections['default'].close()
                    except Exception:
                        pass
                if self.redis_down:
                    self._wait_for_redis()
                else:
                    self._stopping.wait(self.settings.relay_interval)
        finally:
            connections.close_all()

    def _wait_for_redis(self):
        """
        While Redis is away, ask it (and only it: no database query) every ``REDIS_POLL`` seconds, so that the next
        tick, and the owed pushes of the outage, follow within a fraction of a second of Redis answering again.
        """
        deadline = time.monotonic() + self.settings.relay_interval
        while not self._stopping.wait(REDIS_POLL):
            if relay.redis_answers() or time.monotonic() >= deadline:
                return


_loop = None

# Work horses RQ's worker is waiting on or handling the end of (``patches._wrap_monitor``): their end is closed by
# ``horse_ended`` with RQ's own reason (a stop from Background Tasks), not by the loop's backstop.
monitored = set()


def start(worker, guard=False):
    """
    Start the loop for an RQ worker (from ``Worker.work()``). Registers the worker's heartbeat first, so that the
    work horses it forks stamp their leases with a worker the liveness check knows. `guard` says whether the worker
    guard is installed in this process (the patch installer knows; the heartbeat tells the pages). Never raises.
    """
    global _loop
    settings = get_settings()
    if not settings.worker_loop or _loop is not None:
        return None
    try:
        # RQ backs off exponentially (to 60 s) while Redis is away: after an outage, jobs would wait for the
        # worker's next attempt long after Redis is back and the relay has sent them.
        worker.exponential_backoff_factor = 1.0
        worker.max_connection_wait_time = min(getattr(worker, 'max_connection_wait_time', 60),
                                              settings.worker_reconnect_interval)
        bound_redis_retries(worker.connection, settings.worker_reconnect_interval)
        identity = workers.set_current(getattr(worker, 'name', ''), guard=guard,
                                       queues=_queue_names(worker))
        # This thread forks the work horses: it must hold no database session when it does (sessions.py).
        sessions.install_fork_hook()
        try:
            sessions.run_in_own_session(workers.beat, identity)
        except Exception:
            logger.exception('worker heartbeat not written at start-up; the loop will try again')
        try:
            sessions.run_in_own_session(warm, identity.guard)
        except Exception:
            logger.warning('work horses not prepared at start-up; each builds what it needs', exc_info=True)
        _loop = WorkerLoop(identity, settings, worker=worker)
        _loop.start()
        logger.info('worker loop started for %s (relay every %ss, heartbeat every %ss)', identity.name,
                    settings.relay_interval, settings.heartbeat_interval)
    except Exception:
        logger.exception('worker loop not started; owed pushes wait for `netbox safejobs_recover`')
        _loop = None
    return _loop


def _queue_names(worker):
    """The RQ queues ``worker`` listens on (RQ's ``Worker.queue_names()``; none for a worker without it)."""
    try:
        return [str(name) for name in worker.queue_names()]
    except Exception:
        return []


def warm(with_guard):
    """
    What every work horse would otherwise work out again, once per job, worked out once in the worker it forks
    from: the guard's statements and metadata, and NetBox's own check that its ``core_objecttype`` table exists
    (``compat.warm_object_types``).
    """
    if with_guard:
        guard.warm()
    compat.warm_object_types()


def stop():
    """Stop the loop and forget the worker's heartbeat (a clean stop). Never raises."""
    global _loop
    loop, _loop = _loop, None
    if loop is None:
        return
    try:
        loop.stop()
        sessions.run_in_own_session(workers.forget, loop.identity)
    except Exception:
        logger.exception('worker heartbeat not removed; it is forgotten once stale')
    finally:
        sessions.install_fork_hook(enabled=False)


def horse_ended(worker, horse_pid, stopped):
    """
    RQ's worker saw its work horse end abnormally (killed, out of memory, or stopped from Background Tasks): close
    the job that horse held, now, rather than waiting for a heartbeat to go stale. Runs in a session of its own
    (``sessions.run_in_own_session``): the worker's main thread, which forks the next horse, keeps none. Never raises.
    """
    identity = workers.current()
    if identity is None or not horse_pid:
        return []
    if stopped:
        reason = 'The job was stopped from Background Tasks (its work horse was terminated)'
        kind = RetryEventKindChoices.KIND_OPERATOR_STOPPED
    else:
        reason = 'The work horse running this job died (killed by a signal or out of memory)'
        kind = RetryEventKindChoices.KIND_STUCK_ERRORED
    try:
        return sessions.run_in_own_session(liveness.close_horse, identity, horse_pid, reason, kind=kind)
    except Exception:
        logger.exception('job of dead work horse %s not closed now; the worker loop closes it on its next check',
                         horse_pid)
        return []

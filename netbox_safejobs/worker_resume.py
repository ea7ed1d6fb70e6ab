"""
RQ's work loop, resumed after Redis goes away instead of ending the worker.

RQ's ``Worker.work()`` survives a Redis outage only while it waits for a task (``dequeue_job_and_maintain_ttl`` has
its own reconnect loop). A connection error anywhere else in the loop (the worker finishing a job, its heartbeat, its
maintenance tasks) ends the loop: RQ logs "found an unhandled exception, quitting", its ``teardown()`` then fails on
the same dead connection, and ``netbox rqworker`` exits, with status 0 or 1. NetBox's own systemd unit restarts it
only on failure, so after a Redis restart a deployment can be left with no worker at all; under any supervisor the
jobs of the outage wait for the restart (a new Python process and ``django.setup()``: seconds).

Here, when the loop ended on a Redis connection error and nobody asked the worker to stop, the worker stops its
scheduler process and pub/sub thread, waits for Redis to answer (a PING every ``REDIS_POLL`` seconds), marks its
old registration dead, and enters RQ's ``work()`` again, as the same worker object and process: RQ's own start-up
(registration, pub/sub, scheduler) runs again. Burst workers, workers with ``max_jobs`` or ``max_idle_time``, and
workers asked to stop end as RQ ends them.
"""

import inspect
import logging
import os
import signal
import time
from functools import wraps

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import compat
from .queues import fail_fast

__all__ = (
    'REDIS_ERRORS',
    'work',
)

logger = logging.getLogger('netbox_safejobs.worker')

# The errors of a Redis that went away (redis-py raises OSError subclasses as ConnectionError, but a socket can also
# fail underneath it).
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

# Seconds between two PINGs of a Redis that does not answer.
REDIS_POLL = 0.1

# The methods RQ's work loop calls between two tasks; a Redis error raised by one of them is what ended the loop.
_LOOP_METHODS = ('check_for_suspension', 'run_maintenance_tasks', 'dequeue_job_and_maintain_ttl', 'execute_job',
                 'heartbeat')
_NOTED = '_safejobs_redis_error'


def _note_redis_errors(worker):
    """
    Wrap, on this worker object only, the methods of RQ's loop so that a Redis error one of them raises is noted on
    the worker before RQ swallows it (RQ catches everything, logs it and leaves the loop).
    """
    for name in _LOOP_METHODS:
        method = getattr(worker, name, None)
        if method is None or getattr(method, '_safejobs_noting', False):
            continue

        def noting(*args, _method=method, **kwargs):
            try:
                return _method(*args, **kwargs)
            except REDIS_ERRORS as e:
                setattr(worker, _NOTED, e)
                raise

        noting = wraps(method)(noting)
        noting._safejobs_noting = True
        setattr(worker, name, noting)


def _resumable(original, worker, args, kwargs):
    """Whether this call of ``work()`` runs until stopped: not a burst, no job or idle limit."""
    try:
        bound = inspect.signature(original).bind(worker, *args, **kwargs)
    except TypeError:
        return False
    arguments = bound.arguments
    return not (arguments.get('burst') or arguments.get('max_jobs') is not None
                or arguments.get('max_idle_time') is not None)


def _stopping(worker):
    # RQ's request_stop() sets _shutdown_requested_date on SIGTERM/SIGINT; _stop_requested is set when it came
    # while the worker was busy.
    return bool(getattr(worker, '_stop_requested', False) or getattr(worker, '_shutdown_requested_date', None))


def _wait_for_redis(worker):
    """
    Wait until Redis answers again. False when the worker is asked to stop meanwhile. Asked on a connection of its
    own that gives up a silent Redis after 5 s (``queues.fail_fast``): the worker's own has no read timeout, and a
    Redis that accepts and never answers would hold the worker here for good.
    """
    StopRequested = compat.rq_stop_requested()  # noqa: N806 (a class)

    probe = fail_fast(worker.connection)
    try:
        while not _stopping(worker):
            try:
                probe.ping()
                return True
            except REDIS_ERRORS:
                time.sleep(REDIS_POLL)
    except StopRequested:  # SIGTERM while waiting: RQ's handler raises it when the worker is not busy
        pass
    finally:
        probe.connection_pool.disconnect()
    return False


def _let_go(worker):
    """
    While Redis is away, what RQ's ``teardown()`` could not do on the dead connection, without Redis: stop the
    scheduler process and the pub/sub thread (which otherwise sleeps 2 s between attempts, and would hold up the
    resumption as long). Nothing here waits.
    """
    scheduler = getattr(worker, 'scheduler', None)
    if scheduler is not None:
        # SIGTERM, as RQ's stop_scheduler() sends, without its join(): the scheduler's own shutdown talks to Redis.
        process = getattr(scheduler, '_process', None)
        if process is not None and process.pid:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except OSError:
                pass
        worker.scheduler = None  # work() starts a new one when asked to run with the scheduler
    thread = getattr(worker, 'pubsub_thread', None)
    if thread is not None:
        thread.stop()  # only a flag: the daemon thread closes its connection and ends on its own
        worker.pubsub_thread = None  # RQ's unsubscribe() would talk to Redis for it


def _forget_registration(worker):
    """Mark the old registration dead, so that RQ's ``register_birth()`` accepts the worker's name again."""
    try:
        worker.register_death()
    except Exception:
        logger.debug('register_death after the Redis outage failed', exc_info=True)


def work(original, worker, *args, **kwargs):
    """Run RQ's ``work()``; while it ends on a Redis connection error, wait for Redis and run it again."""
    resumable = _resumable(original, worker, args, kwargs)
    if resumable:
        _note_redis_errors(worker)
    while True:
        setattr(worker, _NOTED, None)
        try:
            result = original(worker, *args, **kwargs)
            error = getattr(worker, _NOTED, None)
        except REDIS_ERRORS as e:  # teardown() on the dead connection, or bootstrap() while Redis flaps
            if not resumable or _stopping(worker):
                raise
            result, error = False, e
        if not resumable or error is None or _stopping(worker):
            return result
        started = time.monotonic()
        logger.warning("Worker %s: Redis went away (%s); resuming RQ's work loop when it answers again",
                       getattr(worker, 'name', '?'), error)
        _let_go(worker)
        if not _wait_for_redis(worker):
            return result
        _forget_registration(worker)
        logger.warning('Worker %s: Redis answered again after %.1fs; work loop resumed', getattr(worker, 'name', '?'),
                       time.monotonic() - started)

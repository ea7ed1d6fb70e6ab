"""
The RQ queues the plugin pushes to: one per queue name and process, pushing at once and failing fast while Redis is
down (the push is stored, and the relay sends it once Redis answers); the worker's own Redis connection, which must
notice Redis again quickly; and the workers RQ lists as live on each Redis.
"""

import functools
import logging

from django.core.signals import setting_changed

from . import compat

__all__ = (
    'bound_redis_retries',
    'fail_fast',
    'get_push_queue',
    'redis_groups',
    'redis_key',
    'rq_worker_names',
)

logger = logging.getLogger('netbox_safejobs.queues')


@functools.cache
def get_push_queue(name):
    """
    An RQ queue that pushes when asked, whatever django-rq's ``COMMIT_MODE``: the plugin calls it only after the
    commit, so a further deferral (to a later commit, or to the end of the request) would only lose the error.

    One queue (and so one Redis connection pool) per queue name and process, rather than a new Redis client for every
    push as ``django_rq.get_queue()`` makes; redis-py resets a pool inherited across a fork. Dropped when the RQ
    settings change (``override_settings`` in tests).
    """
    import django_rq

    kwargs = compat.push_queue_kwargs()
    queue = django_rq.get_queue(name, **kwargs)
    return django_rq.get_queue(name, connection=fail_fast(queue.connection), **kwargs)


def redis_groups():
    """
    ``{connection key: (redis connection, [queue names])}``: the RQ queues NetBox knows, grouped by the Redis (host,
    port, socket path, database, Sentinel service) that holds them. What happens to one Redis (lost data, an outage)
    happens to all its queues at once.
    """
    from django.conf import settings

    groups = {}
    for name in getattr(settings, 'RQ_QUEUES', {}):
        connection = get_push_queue(name).connection
        groups.setdefault(redis_key(connection), (connection, []))[1].append(name)
    return groups


def redis_key(connection):
    """
    Which Redis a connection reaches: (host, port, socket path, database, Sentinel service). Behind Sentinel the pool
    has no host or port (the master is asked of the sentinels): its service names it.
    """
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    return (kwargs.get('host'), kwargs.get('port'), kwargs.get('path'), kwargs.get('db'),
            getattr(pool, 'service_name', None))


def rq_worker_names(connection):
    """
    The names of the workers RQ lists as live on one Redis, in two round trips (the registry's members, then one
    pipelined ``EXISTS`` per worker key, skipping registrations whose key expired): for the Prometheus gauges, which
    must stay cheap, and for adoption. Every RQ a supported NetBox installs (2.1 – 2.12) keeps the registry in
    ``rq.worker_registration.get_keys()`` and names keys ``Worker.redis_worker_namespace_prefix + name``.
    """
    from rq import worker_registration
    from rq.worker import Worker

    keys = sorted(worker_registration.get_keys(connection=connection))
    if not keys:
        return set()
    pipe = connection.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    prefix = Worker.redis_worker_namespace_prefix
    return {key[len(prefix):] for key, present in zip(keys, pipe.execute(), strict=True)
            if present and key.startswith(prefix)}


def _forget_queues(setting=None, **kwargs):
    if setting in (None, 'RQ_QUEUES', 'RQ'):
        get_push_queue.cache_clear()


setting_changed.connect(_forget_queues, dispatch_uid='netbox_safejobs.queues.forget')


def bound_redis_retries(connection, interval):
    """
    The worker's own Redis connection: redis-py 6+ retries a refused connection three times with backoff (3.6 s in
    all) before RQ sees the error, and a worker caught in those retries when Redis comes back waits them out before it
    takes a task. Two retries ``interval / 5`` apart keep a blip invisible and let the worker notice Redis again within
    ``interval``. Its work horses inherit it; pushes use their own connection (``fail_fast``). redis-py before 4.3
    (no ``set_retry``) retries nothing by default, and is left as it is.
    """
    try:
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry

        connection.set_retry(Retry(ConstantBackoff(interval / 5), 2))
    except (ImportError, AttributeError) as e:
        logger.debug('worker connection retries left as they are: %s', e)


def fail_fast(connection):
    """
    The same Redis, without redis-py's retries (redis-py 6+ retries a refused connection three times with backoff,
    3.6 s in all): a push the plugin makes may fail, since it is stored and the relay sends it as soon as Redis
    answers, but it must not hold a web request for seconds per job while Redis is down. A connection that hangs, or a
    reply that never comes, is given up after 5 seconds. Left as it is with redis-py before 4.3 (no ``Retry``),
    which retries nothing.
    """
    from redis import ConnectionPool, Redis

    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        return connection
    pool = connection.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.pop('connection_pool', None)  # a Sentinel pool's own proxy; a new Sentinel pool makes its own
    kwargs['retry'] = Retry(NoBackoff(), 0)
    kwargs.pop('retry_on_timeout', None)
    if kwargs.get('socket_connect_timeout') is None:
        kwargs['socket_connect_timeout'] = 5
    # A Redis that accepts and never answers (a hung server, a blackholed route) is given up on as fast: the relay
    # must not hold its rows' locks, nor a worker loop its tick, for as long as the hang lasts.
    if kwargs.get('socket_timeout') is None:
        kwargs['socket_timeout'] = 5
    if getattr(pool, 'service_name', None) is not None and hasattr(pool, 'sentinel_manager'):
        from redis.sentinel import SentinelConnectionPool

        # Still a Sentinel pool: it asks the sentinels for the master on each connect and drops its idle connections
        # to a master that failed over (a plain pool would keep them, and read the marker or task statuses from the
        # old master, now a replica or gone).
        return Redis(connection_pool=SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, is_master=pool.is_master,
            check_connection=pool.check_connection, connection_class=pool.connection_class, **kwargs))
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))

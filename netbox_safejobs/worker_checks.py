"""
NetBox's "is a worker running?" checks, answered from the database while the plugin's workers heartbeat there.

Before it accepts a script run (UI and REST API), a background API request or (4.7) a search-cache indexing job, NetBox
asks Redis whether a worker listens on the queue (``any_workers_for_queue``, ``get_workers_for_queue``). With Redis
away that question raises (a 500, or "indexing inline"), although the plugin stores the push and its relay delivers it
as soon as Redis answers. Wrapped here: when Redis raises or knows no worker, a guarded worker of the plugin that
heartbeated within ``stuck_after`` seconds and listens on the queue (``WorkerHeartbeat``) answers instead. With none,
NetBox's own answer stands, and where Redis raised, the answer is "no worker": NetBox then refuses a script run or a
background request as it does when it sees none (a 503 and its message) instead of answering 500, and indexes the
search cache inline, as it does on a Redis error.
"""

import logging
from functools import wraps

from django.db import DatabaseError, connections

from .settings import get_settings

__all__ = (
    'heartbeating_workers',
    'wrap_worker_check',
)

logger = logging.getLogger('netbox_safejobs.worker_checks')


def heartbeating_workers(queue_name, using='default'):
    """
    How many guarded workers listening on ``queue_name`` heartbeated within ``stuck_after`` seconds (database clock);
    a worker of a release that did not record its queues counts for every queue. 0 when the database cannot say.
    """
    from .models import WorkerHeartbeat

    try:
        with connections[using].cursor() as cursor:
            cursor.execute(
                f'SELECT count(*) FROM {WorkerHeartbeat._meta.db_table} '
                f"WHERE guard AND seen >= clock_timestamp() - %s * interval '1 second' "
                f"AND (queues = '' OR %s = ANY(string_to_array(queues, ' ')))",
                [get_settings().stuck_after, queue_name],
            )
            return cursor.fetchone()[0]
    except DatabaseError as e:
        logger.warning('workers of queue %s not looked up in the database (%s)', queue_name, e)
        return 0


def wrap_worker_check(original, counts):
    """
    The wrapper of NetBox's ``any_workers_for_queue`` (``counts`` False: answers a bool) or ``get_workers_for_queue``
    (``counts`` True: a number), installed under every name a module imported it as.
    """
    from redis.exceptions import RedisError

    @wraps(original)
    def check(queue_name, *args, **kwargs):
        error = None
        try:
            answer = original(queue_name, *args, **kwargs)
        except (RedisError, OSError) as e:
            answer, error = None, e
        if answer:
            return answer
        count = heartbeating_workers(queue_name)
        if count:
            if error is not None:
                logger.info('Redis did not answer whether a worker listens on queue %s (%s); %d worker(s) heartbeat '
                            'in the database: the push is stored and sent when Redis answers', queue_name, error,
                            count)
            return count if counts else True
        if error is not None:
            logger.warning('Redis did not answer whether a worker listens on queue %s (%s), and no worker heartbeats '
                           'in the database: answered "no worker"', queue_name, error)
            return 0 if counts else False
        return answer

    check.__safejobs_original__ = original
    return check

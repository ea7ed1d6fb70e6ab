"""
Scheduled tasks no RQ scheduler moves. RQ keeps a task pushed with ``enqueue_at`` (a job with ``schedule_at``, the next
run of a periodic job, NetBox's system jobs) in its queue's ``ScheduledJobRegistry`` until a scheduler moves it to the
queue once it is due. One worker runs the scheduler, under a lock in Redis that outlives it by 61 s, and the other
workers try to take the lock over only in RQ's maintenance tasks, every 10 minutes (``DEFAULT_MAINTENANCE_TASK_
INTERVAL``): a worker killed with its scheduler (SIGKILL, the OOM killer, a host lost) leaves every scheduled job up to
ten minutes late, and a worker started without a scheduler leaves them for ever.

Each heartbeat, every worker's loop (``worker_loop.py``) looks for the tasks of its queues that are due since more
than ``OVERDUE`` seconds, one ``ZRANGEBYSCORE`` per queue, and moves them to their queue as RQ's scheduler does. A
task a scheduler moves at the same moment is queued twice and run once (the guard's claim); a task without a Job row
(a webhook) has no claim, which is why the wait is several times the scheduler's one second.
"""

import logging
import time

from .queues import get_push_queue

__all__ = (
    'OVERDUE',
    'enqueue_overdue',
)

logger = logging.getLogger('netbox_safejobs.scheduled')

# Seconds a scheduled task may be overdue before a worker's loop moves it: RQ's scheduler looks every second.
OVERDUE = 10.0


def enqueue_overdue(queue_names, overdue=OVERDUE, now=None):
    """
    Move to its queue every task of ``queue_names`` that RQ's scheduler left in the scheduled registry more than
    ``overdue`` seconds past its time. Returns the ids of the tasks moved.
    """
    from rq.registry import ScheduledJobRegistry

    cutoff = int((time.time() if now is None else now) - overdue)
    moved = []
    for name in queue_names:
        queue = get_push_queue(name)
        registry = ScheduledJobRegistry(queue=queue)
        task_ids = registry.get_jobs_to_schedule(cutoff)
        if not task_ids:
            continue
        for task in queue.job_class.fetch_many(task_ids, connection=queue.connection, serializer=queue.serializer):
            if task is not None:
                queue.enqueue_job(task)
        for task_id in task_ids:
            registry.remove(task_id)
        moved += task_ids
        logger.warning('%d scheduled task(s) of queue %s overdue by more than %ss, no RQ scheduler moving them (its '
                       'worker died?): moved to the queue', len(task_ids), name, overdue)
    return moved

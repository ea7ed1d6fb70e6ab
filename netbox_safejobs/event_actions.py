"""
Pushes to RQ made by event-rule actions that other plugins register (``netbox.event_rules.register_event_rule_action``,
NetBox 4.7), through the outbox.

NetBox's own actions are covered where they push: a webhook (``webhooks.py``) and a script (``JobRunner.enqueue``,
``dispatch.py``). A plugin's action runs its own ``enqueue()``, which may push to RQ directly: Redis away, NetBox logs
the error and goes on (an action of a plugin is isolated), and the push is lost; flushed in a transaction that then
rolls back, it is sent for a change that never happened. While such an action's ``enqueue()`` runs, every push to an RQ
queue in that thread (``Queue.enqueue_call``, which ``enqueue`` goes through, and ``Queue.enqueue_at``) is stored in a
``JobDispatch`` row without a Job, in the caller's transaction, and sent once it commits, as a webhook's is; the action
gets back an RQ job with the task's id, not yet in Redis.

A worker runs such a task as RQ runs it: the plugin does not wrap a function it does not know. Delivery to Redis is at
least once (a task Redis lost is sent again by the relay); what RQ then records of the run is the task's own, and a
task finished, failed, stopped or cancelled is done with (``relay.sweep_sent``).
"""

import threading
import uuid
from contextlib import contextmanager
from functools import wraps

from . import dispatch
from .payload import runner_path

__all__ = (
    'PluginAction',
    'capturing_pushes',
    'wrap_action_provider',
    'wrap_queue_push',
)

_local = threading.local()


@contextmanager
def capturing_pushes():
    """While the block runs, pushes to RQ queues in this thread are stored and sent after commit."""
    _local.depth = getattr(_local, 'depth', 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def _capturing():
    return getattr(_local, 'depth', 0) > 0 and not dispatch.sending()


class PluginAction:
    """An event-rule action registered by a plugin, as ``EventRule.action_provider`` returns it: its ``enqueue()``
    runs with its pushes captured; everything else is the action's own."""

    def __init__(self, action):
        self._action = action

    def enqueue(self, *args, **kwargs):
        with capturing_pushes():
            return self._action.enqueue(*args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._action, attr)

    def __repr__(self):
        return repr(self._action)


def wrap_action_provider(original):
    """The getter installed as ``EventRule.action_provider``; ``original`` is NetBox's."""

    @wraps(original)
    def action_provider(self):
        action = original(self)
        if action is not None and getattr(action, 'is_plugin_provided', False):
            return PluginAction(action)
        return action

    action_provider.__safejobs_original__ = original
    return action_provider


def _task_name(func):
    path = func if isinstance(func, str) else runner_path(getattr(func, '__func__', func))
    return path[:255]


def wrap_queue_push(original, method):
    """The wrapper installed as RQ's ``Queue.enqueue_call`` or ``Queue.enqueue_at`` (``method``)."""

    @wraps(original)
    def queue_push(self, *args, **kwargs):
        if not _capturing():
            return original(self, *args, **kwargs)
        from rq.job import Job as RQJob

        task_id = str(kwargs.get('job_id') or uuid.uuid4())
        kwargs = {**kwargs, 'job_id': task_id}
        func = args[1] if method == 'enqueue_at' and len(args) > 1 else (args[0] if args else kwargs.get('func'))
        name = _task_name(func)
        dispatch.store_task(self.name, method, args, kwargs, runner=name, name=f'Event rule action: {name}'[:200],
                            saved='The change is saved and the task is stored as owed')
        return RQJob(id=task_id, connection=self.connection)

    queue_push.__safejobs_original__ = original
    return queue_push

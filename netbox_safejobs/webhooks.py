"""
Event rules' webhooks through the outbox: the one RQ push NetBox makes outside ``JobRunner.enqueue``.

NetBox hands each webhook of an event rule to RQ itself, with ``get_queue(...).enqueue('extras.webhooks.send_webhook',
...)``, when a request's events are flushed (``extras.event_rules.WebhookAction`` on 4.7, ``process_event_rules`` on
4.2 – 4.6; ``compat.webhook_push_module``). Redis away, that push raised into the request (a 500 for a change already
saved) and the webhook was lost; flushed inside a transaction that then rolled back, it was sent for a change that
never happened. Here, as for jobs (``dispatch.py``):

1. the push is stored in a ``JobDispatch`` row without a Job (``job`` empty, ``job_uuid`` the RQ task id), pickled and
   signed, in the caller's transaction, and sent once that commits (at once outside one); a failed push is stamped
   owed, one ``dispatch failed`` event is recorded, and the relay of every worker sends it when Redis answers;
2. in the work horse, ``send_webhook`` (wrapped) first claims the row: a second copy of the task (re-sent after Redis
   lost it, pushed twice) finds it claimed or gone and does not send the request again; a task requeued by an
   operator in Background Tasks after it gave up is sent. The lease heartbeats while the request is under way. The
   row is deleted once the receiver answered with success. A failed attempt releases it for RQ's own retry
   (``RQ_RETRY_MAX``) with a ``webhook failed`` event; after the last one the row is kept, marked ``gave_up``, until
   an operator sends it again (``resend``) or deletes it. A work horse that dies mid-request leaves a lease the
   liveness check turns back into an owed push: delivered at least once, and a second time only after such a death.

A task without the plugin's marker in its RQ ``meta`` (pushed by a process without the plugin) runs as NetBox runs it.
"""

import logging
import os
import uuid
from functools import wraps

from django.db import connections, router, transaction

from . import events, workers
from .choices import RetryEventKindChoices
from .dispatch import PUSH_MARKER, store_task
from .queues import get_push_queue
from .settings import get_settings

__all__ = (
    'WEBHOOK_TASK',
    'WebhookQueue',
    'resend',
    'wrap_get_queue',
    'wrap_send_webhook',
)

logger = logging.getLogger('netbox_safejobs.webhooks')

# The task NetBox pushes for an event rule's webhook, by the dotted path it pushes (4.2 – 4.7).
WEBHOOK_TASK = 'extras.webhooks.send_webhook'


def _table():
    from .models import JobDispatch

    return JobDispatch._meta.db_table


def _is_webhook(func):
    if isinstance(func, str):
        return func == WEBHOOK_TASK
    return f'{getattr(func, "__module__", "")}.{getattr(func, "__name__", "")}' == WEBHOOK_TASK


def _describe(kwargs):
    """What the webhook is, as the row and its events name it: the webhook, the object type and the event."""
    rule = kwargs.get('event_rule')
    webhook = getattr(rule, 'action_object', None) if rule is not None else None
    object_type = kwargs.get('object_type')
    try:
        model = '.'.join(object_type.natural_key()) if object_type is not None else ''
    except Exception:
        model = str(object_type or '')
    return ' '.join(part for part in (f'Webhook {webhook}' if webhook is not None else 'Webhook', model,
                                      str(kwargs.get('event_type') or '')) if part)[:200]


def store(queue_name, func, args, kwargs):
    """
    Store one webhook push with the caller's transaction and send it after commit (``dispatch.store_task``). Returns
    the RQ task id. A database error raises, as it would have for the change itself; Redis being away never does.
    """
    kwargs = {**kwargs, 'job_id': str(uuid.uuid4())}
    return store_task(queue_name, 'enqueue', (func, *args), kwargs, runner=WEBHOOK_TASK, name=_describe(kwargs),
                      saved='The change is saved and the webhook is stored as owed')


class WebhookQueue:
    """
    The RQ queue as the module pushing webhooks sees it: a webhook's push is stored and sent after commit
    (``store``); anything else is the real queue's.
    """

    def __init__(self, name):
        self.name = name

    def enqueue(self, func, *args, **kwargs):
        if _is_webhook(func):
            return store(self.name, func, args, kwargs)
        return get_push_queue(self.name).enqueue(func, *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(get_push_queue(self.name), attr)


def wrap_get_queue(original):
    """The ``get_queue`` of the module pushing webhooks (``compat.webhook_push_module``)."""

    @wraps(original)
    def get_queue(name='default', *args, **kwargs):
        if args or kwargs:
            return original(name, *args, **kwargs)
        return WebhookQueue(name)

    get_queue.__safejobs_original__ = original
    return get_queue


# --------------------------------------------------------------------------------------------------------------------
# In the work horse
# --------------------------------------------------------------------------------------------------------------------

def _claim(using, task_id, token):
    """
    Claim the webhook's row for this attempt; ``((id, name, queue_name), requeued)``, or ``(None, False)`` when it is
    not to be sent. A row that gave up is claimed too: RQ runs its task again only when an operator requeued it in
    Background Tasks (the relay sends no such row, and RQ has no retry left for it).
    """
    identity = workers.current()
    table = _table()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f'WITH old AS (SELECT id, gave_up FROM {table} WHERE job_uuid = %s AND job_id IS NULL '
            f'AND (claimed IS NULL OR gave_up IS NOT NULL) FOR UPDATE) '
            f'UPDATE {table} d SET claimed = clock_timestamp(), token = %s, worker = %s, worker_host = %s, '
            f'worker_pid = %s, heartbeat = NULL, owed = NULL, gave_up = NULL, sent = coalesce(sent, clock_timestamp()) '
            f'FROM old WHERE d.id = old.id RETURNING d.id, d.name, d.queue_name, old.gave_up IS NOT NULL',
            [task_id, token, identity.id if identity else None, workers.HOST, os.getpid()],
        )
        row = cursor.fetchone()
    return (row[:3], row[3]) if row is not None else (None, False)


def _finish(using, row_id, token, retry_in):
    """
    After a failed attempt: released for RQ's retry (``retry_in`` seconds), or kept as given up (``retry_in`` is
    ``None``). Only while this attempt still holds the row.
    """
    if retry_in is not None:
        sql = (f"UPDATE {_table()} SET claimed = NULL, token = NULL, worker = NULL, worker_host = '', "
               f'worker_pid = NULL, sent = clock_timestamp() WHERE id = %s AND token = %s')
    else:
        sql = (f'UPDATE {_table()} SET gave_up = clock_timestamp(), token = NULL, worker = NULL, worker_pid = NULL '
               f'WHERE id = %s AND token = %s')
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [row_id, token])


def _failed(using, row, token, task, error):
    row_id, name, queue_name = row
    retries_left = getattr(task, 'retries_left', None) or 0
    # RQ keeps no count of attempts that every release fills in: the failures recorded before this one are.
    from .models import RetryEvent

    attempt = RetryEvent.objects.using(using).filter(
        job_uuid=task.id, kind=RetryEventKindChoices.KIND_WEBHOOK_FAILED).count() + 1
    retry_in = None
    if retries_left > 0:
        try:
            retry_in = float(task.get_retry_interval())
        except Exception:
            retry_in = 0.0
    try:
        _finish(using, row_id, token, retry_in)
    except Exception as e:
        # The lease stays: once this work horse has ended, the liveness check turns it back into an owed push.
        logger.warning('webhook %s: its row not released after a failed attempt (%s)', task.id,
                       events.redact(events.describe(e)))
    if retry_in is not None:
        detail = (f'{events.describe(error)}. RQ sends it again in {retry_in:g}s ({retries_left} '
                  f'{"retry" if retries_left == 1 else "retries"} left, RQ_RETRY_MAX).')
    else:
        detail = (f'{events.describe(error)}. No retry left (RQ_RETRY_MAX): the webhook is kept as given up. Send it '
                  f'again from its page under Jobs in flight, or with `netbox safejobs_recover --resend-webhooks`.')
    events.record(RetryEventKindChoices.KIND_WEBHOOK_FAILED, job_uuid=task.id, job_name=name, runner=WEBHOOK_TASK,
                  queue=queue_name, attempt=attempt, delay=retry_in, detail=detail, using=using)


def _skip(using, task_id):
    """This copy of the task is not to be sent: say why (claimed by another attempt, or already delivered)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT name, queue_name, gave_up IS NOT NULL FROM {_table()} '
                       f'WHERE job_uuid = %s AND job_id IS NULL', [task_id])
        row = cursor.fetchone()
    if row is None:
        logger.info('webhook %s: already delivered (its row is gone); this copy of the task is not sent', task_id)
        return
    name, queue_name, gave_up = row
    detail = ('The webhook gave up and waits for an operator; this copy of its task is not sent.' if gave_up else
              'Another copy of this webhook is being sent by a worker; this copy is not sent.')
    events.record(RetryEventKindChoices.KIND_DUPLICATE_SKIPPED, job_uuid=task_id, job_name=name,
                  runner=WEBHOOK_TASK, queue=queue_name, detail=detail, using=using)


def _stop(heartbeat):
    if heartbeat is not None:
        heartbeat.stop()


def wrap_send_webhook(original):
    """The wrapper installed as ``extras.webhooks.send_webhook``, which RQ imports by its path to run the task."""

    @wraps(original)
    def send_webhook(*args, **kwargs):
        from rq import get_current_job

        task = get_current_job()
        if task is None or not (task.meta or {}).get(PUSH_MARKER):
            return original(*args, **kwargs)
        from .models import JobDispatch

        using = router.db_for_write(JobDispatch)
        token = uuid.uuid4()
        row, requeued = _claim(using, task.id, token)
        if row is None:
            _skip(using, task.id)
            return None
        if requeued:
            events.record(RetryEventKindChoices.KIND_RECOVERED, job_uuid=task.id, job_name=row[1],
                          runner=WEBHOOK_TASK, queue=row[2], using=using,
                          detail='Webhook requeued in Background Tasks after it gave up: sent again.')
        # While the request is under way, its lease heartbeats as a job's does: a send that outlives stuck_after
        # while its worker's own heartbeat is late (a long tick) is not taken for a dead one and sent again.
        heartbeat = None
        if workers.current() is not None:
            heartbeat = workers.LeaseHeartbeat(row[0], token, get_settings().heartbeat_interval, using, column='id')
            heartbeat.start()
        try:
            result = original(*args, **kwargs)
        except Exception as e:
            _stop(heartbeat)
            _failed(using, row, token, task, e)
            raise
        _stop(heartbeat)
        with connections[using].cursor() as cursor:
            cursor.execute(f'DELETE FROM {_table()} WHERE id = %s AND token = %s', [row[0], token])
        return result

    send_webhook.__safejobs_original__ = original
    return send_webhook


# --------------------------------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------------------------------

def resend(queryset, user=None):
    """
    Send the given webhooks that gave up again: owed at once, sent by the relay of every worker within a second
    (``netbox safejobs_recover`` where none runs), with one ``recovered`` event each. Returns how many.
    """
    rows = list(queryset.filter(job__isnull=True, gave_up__isnull=False).values_list('id', 'job_uuid', 'name',
                                                                                     'queue_name'))
    if not rows:
        return 0
    using = queryset.db
    who = f' by {user}' if user is not None and getattr(user, 'is_authenticated', False) else ''
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {_table()} SET gave_up = NULL, claimed = NULL, token = NULL, worker = NULL, worker_host = '', "
            f'worker_pid = NULL, heartbeat = NULL, sent = NULL, owed = clock_timestamp() '
            f'WHERE id = ANY(%s) AND job_id IS NULL AND gave_up IS NOT NULL RETURNING id',
            [[row[0] for row in rows]],
        )
        done = {row_id for (row_id,) in cursor.fetchall()}
        events.record_many(RetryEventKindChoices.KIND_RECOVERED, [
            {'job_uuid': task_id, 'job_name': name, 'runner': WEBHOOK_TASK, 'queue': queue_name,
             'detail': f'Webhook sent again{who} after RQ gave up on it; the relay pushes it within a second.'}
            for row_id, task_id, name, queue_name in rows if row_id in done
        ], using=using)
    return len(done)

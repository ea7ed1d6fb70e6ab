"""Choice sets of the plugin's models."""

from django.utils.translation import gettext_lazy as _
from utilities.choices import ChoiceSet

__all__ = (
    'JobDispatchStateChoices',
    'KIND_HELP',
    'KIND_LABELS',
    'RetryEventKindChoices',
    'kind_help',
)


class RetryEventKindChoices(ChoiceSet):
    """
    What happened to a job. Each kind is written by ``events.record()`` and nowhere else, so that the row, the
    log line and the counters never disagree.
    """

    # Worker guard: the Job row was not there at the first look.
    KIND_RETRY = 'retry'
    KIND_FOUND_AFTER_RETRY = 'found_after_retry'
    KIND_GAVE_UP = 'gave_up'
    # Worker guard: the database itself failed (not the same thing as "row missing").
    KIND_DATABASE_ERROR = 'database_error'
    # Worker guard: another copy of the task already claimed the job.
    KIND_DUPLICATE_SKIPPED = 'duplicate_skipped'
    # Dispatch: the push to Redis failed after the transaction committed.
    KIND_DISPATCH_FAILED = 'dispatch_failed'
    # Relay: an owed push was sent again. Liveness: a job whose worker or work horse died was closed.
    KIND_RECOVERED = 'recovered'
    KIND_STUCK_ERRORED = 'stuck_errored'
    # Worker guard: the Job row was deleted while the job ran; the run ended without re-creating it.
    KIND_ROW_DELETED = 'row_deleted'
    # Relay: a stored push that is not the plugin's own (bad signature, truncated, unreadable); the job is errored.
    KIND_PAYLOAD_REJECTED = 'payload_rejected'
    # An operator deleted or stopped the job's task in Background Tasks: the plugin does not send it again.
    KIND_OPERATOR_STOPPED = 'operator_stopped'
    # An event rule's webhook: an attempt failed (RQ retries it, or gave up), or its work horse died mid-request.
    KIND_WEBHOOK_FAILED = 'webhook_failed'

    CHOICES = [
        (KIND_RETRY, _('Retry'), 'yellow'),
        (KIND_FOUND_AFTER_RETRY, _('Found after retry'), 'green'),
        (KIND_GAVE_UP, _('Gave up'), 'red'),
        (KIND_DATABASE_ERROR, _('Database error'), 'orange'),
        (KIND_DUPLICATE_SKIPPED, _('Duplicate skipped'), 'blue'),
        (KIND_DISPATCH_FAILED, _('Dispatch failed'), 'red'),
        (KIND_RECOVERED, _('Recovered'), 'teal'),
        (KIND_STUCK_ERRORED, _('Stuck job errored'), 'purple'),
        (KIND_ROW_DELETED, _('Row deleted mid-run'), 'gray'),
        (KIND_PAYLOAD_REJECTED, _('Stored push rejected'), 'red'),
        (KIND_OPERATOR_STOPPED, _('Stopped by operator'), 'gray'),
        (KIND_WEBHOOK_FAILED, _('Webhook failed'), 'orange'),
    ]


# What each kind of event means and what to do about it, shown on the event list (tooltip) and the event's page.
# docs/troubleshooting.md's table of event kinds mirrors this text word for word (tests.test_event_kinds checks it):
# change both together. ``value: (written by, what it means, what to do)``; `backticks` mark names.
KIND_HELP = {
    'retry': (
        'worker guard',
        'The worker did not find the Job row of a task it did not know to be pushed after commit (pushed by stock '
        'code, by a process without the plugin, or on NetBox ≤ 4.2.5), and will look again after `delay` seconds.',
        'Nothing, if a `found after retry` follows. Many of them: a process enqueues without the plugin (a worker or '
        'web server not restarted since it was installed), or transactions stay open long around enqueues.',
    ),
    'found_after_retry': (
        'worker guard',
        'The row appeared after `attempt` retries; `delay` is the total wait. The job ran normally.',
        'Nothing. Frequent ones with long waits point at transactions held open after an enqueue: shorten them.',
    ),
    'gave_up': (
        'worker guard',
        'The row is not there. For a task the plugin pushed after commit (`attempt` 0), the row was deleted '
        '(housekeeping, a user) before a worker took it: dropped at once. For any other task, the row never appeared '
        'within `lookup_retries` / `lookup_max_wait` (rolled back or deleted). Either way the task was dropped and '
        'the row was **not** re-created.',
        'Usually nothing: the job does not exist. If a job you expect to exist gave up after retries, its '
        'transaction is held open longer than `lookup_max_wait`: raise it.',
    ),
    'database_error': (
        'worker guard',
        'The database failed while the worker claimed the job (connection refused, server restarting, connection '
        'terminated, a claim whose reply was lost). The worker reconnected and tried again (a claim that had '
        'committed is recognised by its token and runs); after `database_retries` (about 11.5 s) it let the task fail '
        "in RQ. The same event is recorded when a running job's own save meets a database error and is tried "
        'again.',
        'Check PostgreSQL. Nothing to requeue: the Job stays pending, and once the database answers the relay in '
        "every worker sees its task failed in RQ before the claim, takes it out of the failed registry and sends it "
        "again (within 2 s of a worker's relay reaching the database).",
    ),
    'duplicate_skipped': (
        'worker guard',
        'A second copy of a task found its job already `running` or finished and did not run it again. Happens when '
        'a task is requeued by hand, or a push whose process was slow to commit was also sent by the relay (see '
        '`unknown_push_age`).',
        'Nothing: this is the guard preventing a double run.',
    ),
    'dispatch_failed': (
        'dispatch',
        'The push to Redis failed after the transaction committed (Redis down or unreachable). The caller saw no '
        'error; the job is committed and its push is stored as owed.',
        'Bring Redis back. The relay of every worker sends it within a second of Redis answering; a `recovered` '
        'event follows. With no worker running, `netbox safejobs_recover` sends it.',
    ),
    'recovered': (
        'relay',
        'An owed push was sent from the stored push: after a `dispatch failed`, after a process died between commit '
        'and push (its row stayed unstamped for `unknown_push_age`), or after Redis lost its data (its marker key '
        'was gone and the task with it).',
        'Nothing. Many at once without `dispatch failed` before them: Redis is losing data (restarts without '
        'persistence, evictions, failovers); the log says `Redis of queues … lost its data`.',
    ),
    'stuck_errored': (
        'liveness',
        "A job's work horse died (closed at once), or its worker stopped heartbeating for `stuck_after` seconds "
        "(SIGKILL, OOM killer, host lost). It was marked errored through NetBox's `handle()` with an explanatory "
        'error text and, if periodic, scheduled again with its arguments.',
        'Look at why the process died (memory limits, `dmesg`, the process supervisor). The job itself may have '
        'done part of its work.',
    ),
    'row_deleted': (
        'worker guard',
        "The job's row was deleted while the job ran. The run ended without re-creating the row; a periodic job got "
        'no next run.',
        'Nothing, if the deletion was meant.',
    ),
    'payload_rejected': (
        'relay',
        'An owed push could not be trusted or read: bad signature (written by another installation, altered, or '
        '`SECRET_KEY` changed), truncated, or its runner class no longer exists. It was not unpickled; the job was '
        'marked errored.',
        "Enqueue the job again if it should run. Many at once after a deploy: `SECRET_KEY` changed, or a plugin's "
        'job class was renamed.',
    ),
    'operator_stopped': (
        'dispatch, liveness',
        "The job's task was deleted (the job closed as failed) or stopped (closed as errored) from NetBox's "
        'Background Tasks. It is not sent again.',
        'Nothing: that was a decision. Enqueue the job anew to run it.',
    ),
    'webhook_failed': (
        'webhooks, liveness',
        "An event rule's webhook was not delivered: the receiver failed or answered with an error (`attempt` is the "
        'attempt, `delay` the seconds until RQ tries again, per `RQ_RETRY_MAX` and `RQ_RETRY_INTERVAL`), or the work '
        'horse sending it died (it is sent again). After the last attempt the webhook is kept as given up under Jobs '
        'in flight.',
        'Check the receiver. Once it answers, send a given-up webhook again from its page under Jobs in flight or '
        'with `netbox safejobs_recover --resend-webhooks`.',
    ),
}


def kind_help(kind, plain=False):
    """
    ``{'written_by', 'meaning', 'action'}`` of an event kind (empty strings for an unknown one). ``plain``: without
    the Markdown marks (`` ` `` and ``**``), for a tooltip.
    """
    written_by, meaning, action = KIND_HELP.get(kind, ('', '', ''))
    if plain:
        meaning, action = (text.replace('`', '').replace('**', '') for text in (meaning, action))
    return {'written_by': written_by, 'meaning': meaning, 'action': action}


# Each kind's label (translated when shown): what ``get_kind_display()`` finds by building a dict of the choices on
# every call, which a list page of 50 events made 50 times over (each row's checkbox is labelled with the event).
KIND_LABELS = {value: label for value, label, *_color in RetryEventKindChoices.CHOICES}


class JobDispatchStateChoices(ChoiceSet):
    """
    Where a job in flight is (``in_flight.state_q`` decides each, by the database's clock): its push written with
    the Job row, sent to RQ, owed (failed, lost by Redis, or left unsent by a process that died), claimed by a worker
    (the lease), or a stuck candidate (a lease whose worker and work horse stopped heartbeating).
    """

    STATE_WRITTEN = 'written'
    STATE_SENT = 'sent'
    STATE_OWED = 'owed'
    STATE_CLAIMED = 'claimed'
    STATE_STUCK = 'stuck'
    STATE_GAVE_UP = 'gave_up'

    CHOICES = [
        (STATE_WRITTEN, _('Written'), 'cyan'),
        (STATE_SENT, _('Sent'), 'blue'),
        (STATE_OWED, _('Owed'), 'orange'),
        (STATE_CLAIMED, _('Claimed'), 'green'),
        (STATE_STUCK, _('Stuck candidate'), 'red'),
        (STATE_GAVE_UP, _('Gave up'), 'red'),
    ]

"""Choice sets of the plugin's models, and the states of NetBox's Job the plugin acts on."""

from core.choices import JobStatusChoices
from django.utils.translation import gettext_lazy as _
from utilities.choices import ChoiceSet

from .settings import get_settings

__all__ = (
    'CLAIMABLE_STATES',
    'JobDispatchStateChoices',
    'KIND_HELP',
    'KIND_LABELS',
    'RUNNING',
    'RetryEventKindChoices',
    'STATE_HELP',
    'kind_help',
    'state_help',
    'strip_marks',
)

# The states a job waits in before a worker starts it: a claim moves exactly these to "running". The same on every
# supported NetBox (4.2 – 4.7); named here so that a NetBox adding a waiting state changes one line.
CLAIMABLE_STATES = (JobStatusChoices.STATUS_PENDING, JobStatusChoices.STATUS_SCHEDULED)
RUNNING = JobStatusChoices.STATUS_RUNNING


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
    # Adoption: a job NetBox left waiting or running without the plugin, taken over (or listed: it cannot be rebuilt).
    KIND_ADOPTED = 'adopted'
    KIND_NOT_ADOPTED = 'not_adopted'
    # Chains: a periodic job's second future run, deleted or not created.
    KIND_CHAIN_MERGED = 'chain_merged'

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
        (KIND_PAYLOAD_REJECTED, _('Saved task rejected'), 'red'),
        (KIND_OPERATOR_STOPPED, _('Stopped by operator'), 'gray'),
        (KIND_WEBHOOK_FAILED, _('Webhook failed'), 'orange'),
        (KIND_ADOPTED, _('Adopted'), 'cyan'),
        (KIND_NOT_ADOPTED, _('Not adopted'), 'orange'),
        (KIND_CHAIN_MERGED, _('Chain merged'), 'indigo'),
    ]


# What each kind of event means and what to do about it, shown on the event list (tooltip) and the event's page.
# docs/troubleshooting.md's table of event kinds mirrors this text word for word (tests.test_event_kinds checks it):
# change both together. ``value: (written by, what it means, what to do)``; `backticks` mark names.
KIND_HELP = {
    'retry': (
        'worker',
        "A worker took the job's task from its queue before the job was saved in the database (the task was queued by "
        'a process without the plugin, or by NetBox 4.2.5 or older). The worker looks for the job again after `delay` '
        'seconds.',
        'Nothing, if a `found after retry` event follows. If there are many: restart every web server and worker not '
        'restarted since the plugin was installed, and look for long database transactions around the code that '
        'enqueues jobs.',
    ),
    'found_after_retry': (
        'worker',
        'The worker found the job after `attempt` retries (`delay` is the total wait) and ran it normally.',
        'Nothing. Many, with long waits: the code that enqueues jobs keeps its database transaction open long after '
        'that: shorten it.',
    ),
    'gave_up': (
        'worker',
        "The worker dropped the job's task because the job is not in the database. Either the job was deleted "
        '(housekeeping, a user) before a worker started it (`attempt` 0), or it never appeared within '
        '`lookup_retries` retries and `lookup_max_wait` seconds (its transaction was rolled back). The job was '
        "**not** created again. Or its task failed in RQ before any worker could start it, "
        'each of the `attempt` times it was sent (a task no worker can read, the database away each time); the job '
        "was closed as errored with RQ's last reason, a webhook kept as given up.",
        'Usually nothing: the job does not exist. If a job you expected to run gave up after retries, the code that '
        'enqueued it kept its transaction open longer than `lookup_max_wait`: raise that setting. After failures in '
        "RQ: read the reason (the job's error, the failed task in Background Tasks), fix it, then enqueue the job "
        'again, or press Send again for a webhook.',
    ),
    'database_error': (
        'worker',
        'The database failed while a worker started the job (connection refused, server restarting, connection '
        'lost). The worker reconnected and tried again; after `database_retries` (about 11.5 s) it left the task '
        "failed in RQ, and the job pending. The same event is recorded when a running job's save fails this way and "
        'is tried again.',
        'Check PostgreSQL. Do not enqueue the job again: within 2 seconds of the database answering, a worker sends '
        'its task again and the job runs once.',
    ),
    'duplicate_skipped': (
        'worker',
        "A second copy of the job's task reached a worker after the job had started or finished, and was not run. "
        'This happens when a task is requeued by hand in Background Tasks, or when the process that enqueued the job '
        'was slow to commit and its task was sent a second time (after `unknown_push_age` seconds).',
        'Nothing: the plugin kept the job from running twice.',
    ),
    'dispatch_failed': (
        'the process that enqueued the job',
        "Redis did not accept the job's task after the job was saved (Redis down or unreachable). Whoever enqueued "
        'the job saw no error: the job is saved as pending, and the plugin keeps its task in the database to send '
        'later.',
        'Bring Redis back. Within a second of Redis answering, a worker sends the task and a `recovered` event '
        'follows. With no worker running, `netbox safejobs_recover` sends it.',
    ),
    'recovered': (
        'a worker, or `netbox safejobs_recover`',
        "The job's task was sent to Redis again from the copy the plugin keeps in the database: after a "
        '`dispatch failed`, after the process that enqueued the job died before sending it (nothing was sent for '
        '`unknown_push_age` seconds), or after Redis lost the queued tasks.',
        'Nothing: the job runs once. Many at once without a `dispatch failed` before them: Redis is losing data '
        '(restarts without persistence, evictions, failovers); the log says `Redis of queues … lost its data`.',
    ),
    'stuck_errored': (
        'a worker, or `netbox safejobs_recover`',
        'The job was running when its process died: its work horse was killed (noticed at once), or its worker '
        'stopped reporting for `stuck_after` seconds (SIGKILL, out of memory, host lost). The job was marked errored, '
        'with the reason as its error, and a job that repeats at an interval was scheduled again.',
        'Find out why the process died (memory limits, `dmesg`, the process supervisor). The job may have done part '
        'of its work: check its result before running it again.',
    ),
    'row_deleted': (
        'worker',
        'The job was deleted while it ran. The run ended without saving the job again; a job that repeats at an '
        'interval was not scheduled again.',
        'Nothing, if the deletion was meant. Otherwise run the job again (for a script: run the script).',
    ),
    'payload_rejected': (
        'a worker, or `netbox safejobs_recover`',
        "The job's task could not be sent from the copy the plugin keeps in the database: the copy was not written "
        'by this installation (another installation wrote it, it was altered, or `SECRET_KEY` changed), it is '
        'damaged, or its job class no longer exists. It was not read; the job was marked errored.',
        'Enqueue the job again if it should run. Many at once after an upgrade: `SECRET_KEY` changed, or a plugin '
        'renamed or removed a job class.',
    ),
    'operator_stopped': (
        'dispatch, liveness, the Stop action',
        "The job was stopped while it ran: by an operator's Stop (on its Job page, under Jobs in flight or through "
        "the REST API; the error names who), by the delete of a running job, or from NetBox's Background Tasks (a "
        'deleted task closes the job as failed, a stopped one as errored). A periodic job stopped with Stop gets its '
        'next run unless the operator declined it. It is not run or sent again.',
        'Nothing: that was a decision. Enqueue the job anew to run it.',
    ),
    'webhook_failed': (
        'the worker sending the webhook',
        "An event rule's webhook was not delivered: the receiver failed or answered with an error (`attempt` is the "
        'attempt, `delay` the seconds until it is tried again, per `RQ_RETRY_MAX` and `RQ_RETRY_INTERVAL`), or the '
        'worker sending it died (it is sent again). After the last attempt the webhook is kept under Jobs in Flight '
        'with the state Gave up.',
        "Check the receiver. Once it answers, click **Send again** on the webhook's page under Jobs in Flight, or "
        'run `netbox safejobs_recover --resend-webhooks`.',
    ),
    'adopted': (
        'a worker starting, or `netbox safejobs_recover --adopt`',
        'NetBox left the job waiting or running without the plugin (before the plugin was installed, or in a process '
        'without it during an upgrade), so nothing of the plugin watched it. The detail says what was done: a '
        "waiting job whose task is in Redis is now kept like the plugin's own (sent again if Redis loses it); one "
        'whose task Redis lost was rebuilt (a system job, a data source sync) and sent again; one left running with '
        'no worker to run it was closed as errored, and a job that repeats at an interval was scheduled again.',
        'Nothing: the job runs once, or was closed with the reason as its error. A closed job may have done part of '
        'its work: check its result before running it again.',
    ),
    'not_adopted': (
        'a worker starting, or `netbox safejobs_recover --adopt`',
        'NetBox left the job waiting without the plugin, and Redis no longer holds its task (or holds it cancelled, '
        'or in a form that cannot be read). What the job was to run with was only in that task (for a script: its '
        'data and the request), so the plugin cannot send it again: it stays pending and nothing runs it. The detail '
        'says why.',
        'Run it again from NetBox (for a script: run the script), then delete the pending job. `netbox '
        'safejobs_check` counts the jobs left this way.',
    ),
    'chain_merged': (
        'a worker, or `netbox safejobs_recover`',
        'A job that repeats at an interval had, or was about to get, a second future run (NetBox #21167, #22232: '
        'then each run schedules its own next one, and the job runs twice per interval). The plugin kept one: the '
        'earliest waiting run was kept and the others deleted (their tasks cancelled), or the next run a finished '
        'run was scheduling was not created, because one was already waiting. The detail names the runs.',
        'Nothing: the job keeps one schedule. Schedules made separately (two schedules of one script, each from its '
        'own request) are never merged.',
    ),
}


def kind_help(kind, plain=False):
    """
    ``{'written_by', 'meaning', 'action'}`` of an event kind (empty strings for an unknown one). ``plain``: without
    the Markdown marks (`` ` `` and ``**``), for a tooltip.
    """
    written_by, meaning, action = KIND_HELP.get(kind, ('', '', ''))
    if plain:
        meaning, action = (strip_marks(text) for text in (meaning, action))
    return {'written_by': written_by, 'meaning': meaning, 'action': action}


# Each kind's label (translated when shown): what ``get_kind_display()`` finds by building a dict of the choices on
# every call, which a list page of 50 events made 50 times over (each row's checkbox is labelled with the event).
KIND_LABELS = {value: label for value, label, *_color in RetryEventKindChoices.CHOICES}


class JobDispatchStateChoices(ChoiceSet):
    """
    Where a job in flight is (``in_flight.state_q`` decides each, by the database's clock): its push written with
    the Job row, sent to RQ, scheduled (sent, its Job waiting for its scheduled time), owed (failed, lost by Redis, or
    left unsent by a process that died), claimed by a worker (the lease), or a stuck candidate (a lease whose worker
    and work horse stopped heartbeating). What each means to an operator: ``STATE_HELP``.
    """

    STATE_WRITTEN = 'written'
    STATE_SENT = 'sent'
    STATE_SCHEDULED = 'scheduled'
    STATE_OWED = 'owed'
    STATE_CLAIMED = 'claimed'
    STATE_STUCK = 'stuck'
    STATE_GAVE_UP = 'gave_up'

    CHOICES = [
        (STATE_WRITTEN, _('Written'), 'cyan'),
        (STATE_SENT, _('Sent'), 'blue'),
        (STATE_SCHEDULED, _('Scheduled'), 'indigo'),
        (STATE_OWED, _('Owed'), 'orange'),
        (STATE_CLAIMED, _('Claimed'), 'green'),
        (STATE_STUCK, _('Stuck candidate'), 'red'),
        (STATE_GAVE_UP, _('Gave up'), 'red'),
    ]


# What each state of a job in flight means and what to do, where a state is shown: the legend of the list, the
# tooltip of its badge, the row's page, the dashboard widget. ``state: (what it means, what to do)``; `backticks` mark
# names, ``{stuck_after}`` and ``{unknown_push_age}`` are the settings' values in seconds (``state_help``).
STATE_HELP = {
    'written': (
        'The job was just saved; its task is on its way to the Redis queue.',
        'Nothing: it is sent within milliseconds. Left unsent for {unknown_push_age} s, it is shown as Owed.',
    ),
    'sent': (
        "The job's task is in its Redis queue, waiting for a worker.",
        'Nothing. If it waits long: check that a worker listens on its queue (`netbox rqworker`, `netbox rqstats`).',
    ),
    'scheduled': (
        'The job waits for its scheduled time; its task is in Redis, and a worker runs it when it is due.',
        'Nothing.',
    ),
    'owed': (
        "The job's task has not reached Redis: Redis refused or lost it, or the process that enqueued the job died "
        'first. The job waits as pending; the plugin keeps its task in the database.',
        'Bring Redis back and keep a worker running: a worker sends the task within a second of Redis answering '
        '(without workers, `netbox safejobs_recover` sends it).',
    ),
    'claimed': (
        'A worker is running the job. The row goes away when the job ends.',
        'Nothing.',
    ),
    'stuck': (
        'The job is running, but neither its worker nor its own process has reported for {stuck_after} s: the worker '
        'has probably died.',
        'Nothing for the job: the next check of any worker (or `netbox safejobs_recover`) marks it errored. Find out '
        'why the worker died.',
    ),
    'gave_up': (
        "An event rule's webhook whose every attempt failed; it is kept until someone sends it again.",
        'Fix the receiver, then click **Send again** on its page, or run `netbox safejobs_recover --resend-webhooks`.',
    ),
}


def state_help(state, settings=None, plain=False):
    """
    ``{'meaning', 'action'}`` of a state of a job in flight (empty strings for an unknown one), with the thresholds of
    ``settings`` (the plugin's, by default). ``plain``: without the Markdown marks, for a tooltip.
    """
    settings = settings or get_settings()
    meaning, action = (
        text.format(stuck_after=settings.stuck_after, unknown_push_age=settings.unknown_push_age)
        for text in STATE_HELP.get(state, ('', ''))
    )
    if plain:
        meaning, action = (strip_marks(text) for text in (meaning, action))
    return {'meaning': meaning, 'action': action}


def strip_marks(text):
    """A help text without its Markdown marks (`` ` `` and ``**``), for a tooltip."""
    return text.replace('`', '').replace('**', '')

"""Choice sets of the plugin's models."""

from django.utils.translation import gettext_lazy as _
from utilities.choices import ChoiceSet

__all__ = (
    'RetryEventKindChoices',
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
    ]

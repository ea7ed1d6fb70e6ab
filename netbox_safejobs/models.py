"""The plugin's models: an append-only log of what happened to jobs on their way to a worker."""

from django.contrib.postgres.indexes import GinIndex, OpClass
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import Value
from django.db.models.functions import Replace, Upper
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from netbox.models.features import EventRulesMixin
from utilities.querysets import RestrictedQuerySet

from .choices import KIND_LABELS, RetryEventKindChoices
from .fields import StoredGeneratedField

__all__ = (
    'JobDispatch',
    'RetryEvent',
    'WorkerHeartbeat',
)


class RetryEvent(EventRulesMixin, models.Model):
    """
    One thing that happened to one job: a retry of the worker's look-up, a give-up, a database error, a duplicate
    task skipped, a failed push, a recovery.

    Plain and append-only on purpose (no change logging, no custom fields, no tags), like netbox-branching's
    ``BranchEvent``: events are written from the worker's hot path and must stay cheap. ``EventRulesMixin`` (no
    fields) only lets operators pick retry events as the object type of an event rule. NetBox deletes old Job rows
    during housekeeping, so the job's UUID and name are kept as a snapshot and the foreign key is nulled, not
    cascaded, when the Job goes.
    """

    time = models.DateTimeField(
        verbose_name=_('time'),
        default=timezone.now,
        editable=False,
    )
    job = models.ForeignKey(
        to='core.Job',
        on_delete=models.SET_NULL,
        related_name='+',
        blank=True,
        null=True,
        editable=False,
        # Left empty when the Job row does not exist (yet, or any more) as the event is written: that is what most
        # events are about. job_uuid always identifies the job.
    )
    job_uuid = models.UUIDField(
        verbose_name=_('job UUID'),
        editable=False,
    )
    job_name = models.CharField(
        verbose_name=_('job name'),
        max_length=200,
        blank=True,
        editable=False,
    )
    runner = models.CharField(
        verbose_name=_('runner'),
        max_length=255,
        blank=True,
        editable=False,
        help_text=_('Dotted path of the JobRunner class'),
    )
    queue = models.CharField(
        verbose_name=_('queue'),
        max_length=100,
        blank=True,
        editable=False,
    )
    kind = models.CharField(
        verbose_name=_('kind'),
        max_length=30,
        choices=RetryEventKindChoices,
        editable=False,
    )
    attempt = models.PositiveIntegerField(
        verbose_name=_('attempt'),
        blank=True,
        null=True,
        editable=False,
    )
    delay = models.FloatField(
        verbose_name=_('delay'),
        blank=True,
        null=True,
        editable=False,
        help_text=_('Seconds waited (or to be waited) at this step'),
    )
    detail = models.TextField(
        verbose_name=_('detail'),
        blank=True,
        editable=False,
    )
    worker_host = models.CharField(
        verbose_name=_('worker host'),
        max_length=255,
        blank=True,
        editable=False,
    )
    worker_pid = models.PositiveIntegerField(
        verbose_name=_('worker PID'),
        blank=True,
        null=True,
        editable=False,
    )
    # The words of the quick search (``filtersets.RetryEventFilterSet.search``): those of the job name, the runner's
    # dotted path, the worker host and the detail, computed by PostgreSQL when the row is written and stored with it
    # (a generated column). Checking an event against a search reads them instead of parsing its text again, many
    # times cheaper (docs/performance.md), so a search that matches many events is answered newest first, and
    # ANALYZE keeps statistics of the frequent words. Never shown, exported or serialized.
    search_words = StoredGeneratedField(
        expression=SearchVector('job_name', Replace('runner', Value('.'), Value(' ')), 'worker_host', 'detail',
                                config='simple'),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ('-time', '-pk')
        indexes = (
            # The default ordering: the list page and the API list read the newest events first.
            models.Index(fields=('-time', '-id'), name='netbox_safejobs_time_idx'),
            # The Job page panel and the "events of this job" filter.
            models.Index(fields=('job_uuid', '-time'), name='netbox_safejobs_job_uuid_idx'),
            # Filtering by kind (and the dashboard counts of the last 24 hours).
            models.Index(fields=('kind', '-time'), name='netbox_safejobs_kind_idx'),
            # One per column the list filters by value and sorts by (migration 0004): a filter reads its newest rows
            # first, and a sort by the column (``tables.RetryEventTable``: the column, then newest first) reads the
            # index in either direction, so every page is the first rows of one index whatever the table's size.
            models.Index(fields=('job_name', 'job_uuid'), name='netbox_safejobs_job_name_idx'),
            models.Index(fields=('runner', '-time'), name='netbox_safejobs_runner_idx'),
            models.Index(fields=('queue', '-time'), name='netbox_safejobs_queue_idx'),
            models.Index(fields=('worker_host', '-time'), name='netbox_safejobs_worker_idx'),
            models.Index(fields=('worker_pid', '-time'), name='netbox_safejobs_worker_pid_idx'),
            models.Index(fields=('attempt', '-time'), name='netbox_safejobs_attempt_idx'),
            models.Index(fields=('delay', '-time'), name='netbox_safejobs_delay_idx'),
            # The quick search: the full-text index of ``search_words`` (PostgreSQL's own, no extension). GIN answers
            # a search for a rare word among frequent ones from the rare word's entries alone.
            GinIndex(fields=('search_words',), name='netbox_safejobs_search_idx'),
            # Partial text of one column (the ``__ic``/``__isw``/``__iew``/``__ie`` lookups of the filter set and the
            # API, which Django writes as ``UPPER(column::text) LIKE UPPER(…)``): trigram indexes of pg_trgm on that
            # expression. Migration 0004 creates them only where it could create the extension (see
            # docs/performance.md); without them these lookups read the whole table, as before.
            GinIndex(OpClass(Upper('job_name'), name='gin_trgm_ops'), name='netbox_safejobs_name_trgm'),
            GinIndex(OpClass(Upper('runner'), name='gin_trgm_ops'), name='netbox_safejobs_runner_trgm'),
            GinIndex(OpClass(Upper('worker_host'), name='gin_trgm_ops'), name='netbox_safejobs_worker_trgm'),
        )
        verbose_name = _('retry event')
        verbose_name_plural = _('retry events')

    def __str__(self):
        return f'{KIND_LABELS.get(self.kind, self.kind)}: {self.job_name or self.job_uuid}'

    def get_absolute_url(self):
        return reverse('plugins:netbox_safejobs:retryevent', args=[self.pk])

    def get_kind_color(self):
        return RetryEventKindChoices.colors.get(self.kind)


class JobDispatch(models.Model):
    """
    The dispatch state of one job, written in the same transaction as its Job row: the outbox of the dispatch and,
    once a worker claims the job, its lease. PostgreSQL is the only source of truth about where a job is; the
    plugin never infers it from what Redis holds.

    Its states, each a column set with the database's clock:

    - *written*: ``created`` only. The caller's transaction committed (or has not yet); the push is on its way.
      A row left written longer than ``unknown_push_age`` lost its pushing process (killed between commit and push):
      it is owed.
    - *sent*: ``sent`` is set once RQ accepted the push.
    - *owed*: ``owed`` is set at once when a push fails (Redis down), or when Redis lost the tasks it held (see
      ``relay.py``). Every worker's relay sends owed rows as soon as Redis answers, each row by exactly one relay
      (``FOR UPDATE SKIP LOCKED``).
    - *claimed*: a worker guard claimed the job: ``claimed``, the attempt ``token``, and the claiming ``worker``
      (a ``WorkerHeartbeat``) with its host and work horse pid. The stored push is erased; a periodic job keeps only
      the arguments of its next run. A job that runs longer than ``heartbeat_interval`` has its lease's
      ``heartbeat`` refreshed by its own work horse, so that it outlives a worker that died before it. The row is
      deleted when ``handle()`` returns; a lease whose worker and work horse both stopped heartbeating, or whose work
      horse died, is closed by ``liveness.py``.

    ``payload`` is signed with a key derived from NetBox's ``SECRET_KEY`` and never unpickled unless the signature
    matches. Never shown in the UI, the API or an event: it may hold a user's request.
    """

    job = models.OneToOneField(
        to='core.Job',
        on_delete=models.CASCADE,
        related_name='+',
        null=True,
        editable=False,
        # Empty for a task that is not a NetBox job (an event rule's webhook, ``webhooks.py``): such a row is the
        # task's only record, and ``job_uuid`` is its RQ task id.
    )
    job_uuid = models.UUIDField(editable=False)
    # What the task is, for a row without a Job (a webhook: its name, the object type and the event); a job's name
    # is its Job row's.
    name = models.CharField(max_length=200, blank=True, db_default='', default='', editable=False)
    queue_name = models.CharField(max_length=100, blank=True, editable=False)
    runner = models.CharField(max_length=255, blank=True, editable=False)
    method = models.CharField(max_length=20, blank=True, editable=False)
    payload = models.BinaryField(null=True, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    sent = models.DateTimeField(null=True, editable=False)
    owed = models.DateTimeField(null=True, editable=False)
    recoveries = models.PositiveIntegerField(default=0, editable=False)
    # How many times its task failed in RQ before a worker claimed it (a task that cannot be read, the database away
    # through the guard's retries): each such failure is sent again after a backoff, up to a limit (``relay.py``).
    failures = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)
    claimed = models.DateTimeField(null=True, editable=False)
    token = models.UUIDField(null=True, editable=False)
    worker = models.UUIDField(null=True, editable=False)
    heartbeat = models.DateTimeField(null=True, editable=False)
    worker_host = models.CharField(max_length=255, blank=True, editable=False)
    worker_pid = models.PositiveIntegerField(null=True, editable=False)
    # A task without a Job whose every attempt failed (RQ's ``retries_left`` ran out): kept, claimed by no worker,
    # with its stored push, until an operator sends it again or deletes it.
    gave_up = models.DateTimeField(null=True, editable=False)
    # An operator asked to stop the running job (``stopping.py``): when, who, and whether a periodic job gets its next
    # run. The worker holding the lease stops its work horse; the close that follows names the operator.
    stop_requested = models.DateTimeField(null=True, editable=False)
    stopped_by = models.CharField(max_length=150, blank=True, db_default='', default='', editable=False)
    stop_next_run = models.BooleanField(default=True, db_default=True, editable=False)

    class Meta:
        ordering = ('created', 'pk')
        indexes = (
            # The default order (oldest first) and sorting by age, of the jobs in flight page and API: their first
            # page reads 50 entries instead of sorting every row.
            models.Index(fields=('created', 'id'), name='netbox_safejobs_created_idx'),
            # A job's row in flight by its UUID (the UUID pasted in the quick search, the job_uuid filter): the only
            # other way to it is through the Job row.
            models.Index(fields=('job_uuid',), name='netbox_safejobs_dispatch_uuid'),
            # The relay, once a second in every worker: rows written or owed, oldest first. Partial, so an idle relay
            # reads an empty index however many jobs are queued or running.
            models.Index(
                fields=('created',), name='netbox_safejobs_unsent_idx',
                condition=models.Q(claimed__isnull=True, sent__isnull=True),
            ),
            # Redis lost its tasks: every sent, unclaimed row of its queues is owed again.
            models.Index(
                fields=('queue_name',), name='netbox_safejobs_sent_idx',
                condition=models.Q(claimed__isnull=True, sent__isnull=False),
            ),
            # The relay's sweep of sent, unclaimed rows, oldest first from where the last sweep stopped
            # (``relay.sweep_sent``: ORDER BY sent, id LIMIT 500): a range read, not a sort of every such row.
            models.Index(
                fields=('sent', 'id'), name='netbox_safejobs_sweep_idx',
                condition=models.Q(claimed__isnull=True, sent__isnull=False),
            ),
            # Liveness: the leases of a worker (heartbeat gone stale, work horse died). The covered columns let the
            # stuck rule and the gauges of every scrape read the index alone.
            models.Index(
                fields=('worker',), name='netbox_safejobs_lease_idx',
                condition=models.Q(claimed__isnull=False), include=('claimed', 'heartbeat'),
            ),
        )
        verbose_name = _('job in flight')
        verbose_name_plural = _('jobs in flight')

    def __str__(self):
        return f'{self.job_uuid} ({self.state})'

    def get_absolute_url(self):
        return reverse('plugins:netbox_safejobs:jobdispatch', args=[self.pk])

    @property
    def state(self):
        if self.gave_up:
            return 'gave up'
        if self.claimed:
            return 'claimed'
        if self.owed:
            return 'owed'
        if self.sent:
            return 'sent'
        return 'written'


class WorkerHeartbeat(models.Model):
    """
    One live ``rqworker`` running this plugin: written when it starts, its ``seen`` refreshed (database clock) every
    ``heartbeat_interval`` seconds by the worker's own loop, deleted when it stops cleanly. A lease whose worker has
    not been seen for ``stuck_after`` seconds belongs to a dead worker (SIGKILL, OOM, host lost), as Oban's Lifeline
    and Procrastinate's stalled-job detection decide it: from the database, never from the broker's state.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    name = models.CharField(max_length=255, blank=True, editable=False)
    host = models.CharField(max_length=255, blank=True, editable=False)
    pid = models.PositiveIntegerField(null=True, editable=False)
    version = models.CharField(max_length=50, blank=True, editable=False)
    started = models.DateTimeField(editable=False)
    seen = models.DateTimeField(editable=False)
    # The worker host's own clock, sent with each heartbeat written with the database's (``seen``): their
    # difference is the host's clock skew, to the latency of one statement.
    host_clock = models.DateTimeField(null=True, editable=False)
    # Whether the worker runs the worker guard (a worker with the loop but ``worker_guard`` off runs jobs unguarded).
    guard = models.BooleanField(default=True, db_default=True, editable=False)
    # The RQ queues the worker listens on; empty for a worker of a release before 0.3.0, which did not say.
    queues = models.CharField(max_length=1000, blank=True, db_default='', default='', editable=False,
                              help_text='Space-separated')

    class Meta:
        ordering = ('host', 'pid')
        indexes = (
            # Stale workers, and the health check's list of live ones.
            models.Index(fields=('seen',), name='netbox_safejobs_seen_idx'),
        )
        verbose_name = _('worker heartbeat')
        verbose_name_plural = _('worker heartbeats')

    def __str__(self):
        return f'{self.name or self.host} (pid {self.pid})'

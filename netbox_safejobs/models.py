"""The plugin's models: an append-only log of what happened to jobs on their way to a worker."""

from django.db import models
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from netbox.models.features import EventRulesMixin
from utilities.querysets import RestrictedQuerySet

from .choices import RetryEventKindChoices

__all__ = (
    'JobDispatch',
    'RetryEvent',
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
        )
        verbose_name = _('retry event')
        verbose_name_plural = _('retry events')

    def __str__(self):
        return f'{self.get_kind_display()}: {self.job_name or self.job_uuid}'

    def get_absolute_url(self):
        return reverse('plugins:netbox_safejobs:retryevent', args=[self.pk])

    def get_kind_color(self):
        return RetryEventKindChoices.colors.get(self.kind)


class JobDispatch(models.Model):
    """
    The dispatch state of one job, written in the same transaction as its Job row: the outbox of the dispatch and
    the lease of the worker guard.

    - *Owed*: ``payload`` holds the push as RQ would receive it (the callable and its arguments, pickled; for some
      jobs that includes a request). The push is sent after commit; if it fails, or the process dies first, or Redis
      loses the task, the recovery pass sends it again from here.
    - *Claimed*: the worker guard claimed the job; the payload is erased, ``claimed`` and the worker are set. The
      row is deleted when ``handle()`` returns. A row left claimed means the worker died mid-job: the recovery pass
      closes the job.

    Never shown in the UI, the API or an event: the payload may hold a user's request.
    """

    job = models.OneToOneField(
        to='core.Job',
        on_delete=models.CASCADE,
        related_name='+',
        editable=False,
    )
    job_uuid = models.UUIDField(editable=False)
    queue_name = models.CharField(max_length=100, blank=True, editable=False)
    runner = models.CharField(max_length=255, blank=True, editable=False)
    method = models.CharField(max_length=20, blank=True, editable=False)
    payload = models.BinaryField(null=True, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    pushed = models.DateTimeField(null=True, editable=False)
    recoveries = models.PositiveIntegerField(default=0, editable=False)
    claimed = models.DateTimeField(null=True, editable=False)
    worker_host = models.CharField(max_length=255, blank=True, editable=False)
    worker_pid = models.PositiveIntegerField(null=True, editable=False)

    class Meta:
        ordering = ('created', 'pk')
        indexes = (
            # The recovery pass reads owed pushes and claimed leases by age; it never scans core_job.
            models.Index(fields=('claimed', 'created'), name='netbox_safejobs_dispatch_idx'),
        )
        verbose_name = _('job dispatch')
        verbose_name_plural = _('job dispatches')

    def __str__(self):
        return f'{self.job_uuid} ({"claimed" if self.claimed else "owed"})'

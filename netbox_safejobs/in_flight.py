"""
Jobs in flight: the plugin's outbox and leases (``JobDispatch``) as the operator sees them, in the list and detail
pages, the REST API and the dashboard widget.

A row's state is derived from its timestamp columns, as ``JobDispatch.state`` does, with the two judgements the
relay and the liveness pass make, by the database's clock:

- a row left *written* (neither sent nor owed) for ``unknown_push_age`` seconds lost its pushing process: the relay
  sends it like an owed one, so it is shown as **owed**;
- a webhook whose every attempt failed is **gave up** (``webhooks.py``) until an operator sends it again;
- a sent row whose Job is ``scheduled`` for later than now is **scheduled**: its task waits in RQ's scheduled
  registry, which is not a delay an operator should read as stuck (a periodic job's next run is one);
- a claimed lease whose worker and whose own heartbeat are both older than ``stuck_after`` is a **stuck
  candidate**: the rule of ``liveness.stale_leases``, which closes it at its next pass (a lease without a worker,
  the ``immediate`` jobs of ``netbox runscript``, never is).

Each state is one ``Q``, used by the filters, the counts and the ``state`` annotation alike, so the three never
disagree. The stored push (``payload``) is never read: every queryset here defers it.
"""

from datetime import timedelta

from core.choices import JobStatusChoices
from core.models import Job
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Func,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Greatest
from utilities.querysets import RestrictedQuerySet

from .choices import JobDispatchStateChoices
from .models import JobDispatch, WorkerHeartbeat
from .settings import get_settings

__all__ = (
    'STATE_ORDER',
    'dispatch_queryset',
    'state_counts',
    'state_q',
)

# The states in the order an operator reads them: what is not moving first.
STATE_ORDER = (
    JobDispatchStateChoices.STATE_STUCK,
    JobDispatchStateChoices.STATE_GAVE_UP,
    JobDispatchStateChoices.STATE_OWED,
    JobDispatchStateChoices.STATE_WRITTEN,
    JobDispatchStateChoices.STATE_SCHEDULED,
    JobDispatchStateChoices.STATE_SENT,
    JobDispatchStateChoices.STATE_CLAIMED,
)


class DatabaseNow(Func):
    """The database's clock at the start of the statement, the clock every timestamp of these rows was set with."""
    template = 'statement_timestamp()'
    output_field = DateTimeField()


def _ago(seconds):
    return ExpressionWrapper(DatabaseNow() - Value(timedelta(seconds=seconds)), output_field=DateTimeField())


def _stuck_q(stuck_after):
    """``liveness.stale_leases``'s rule: neither the lease nor its worker heartbeated within ``stuck_after``."""
    cutoff = _ago(stuck_after)
    # The live workers as one uncorrelated subquery (``worker NOT IN (…)``), which PostgreSQL hashes once per
    # statement, in the state's CASE as in a filter. A correlated ``NOT EXISTS`` was costed per row: a sort of a large
    # backlog by state was estimated expensive enough to be JIT-compiled, and took twice as long (docs/performance.md).
    live_workers = WorkerHeartbeat.objects.filter(seen__gte=cutoff).order_by().values('pk')
    return (
        Q(claimed__isnull=False, worker__isnull=False)
        & Q(claimed__lt=cutoff)
        & (Q(heartbeat__isnull=True) | Q(heartbeat__lt=cutoff))
        & ~Q(worker__in=live_workers)
    )


def _scheduled_q():
    """
    The row's Job waits for its scheduled time (database clock). One uncorrelated subquery, which PostgreSQL hashes
    once per statement, as ``_stuck_q``'s live workers: the Jobs of the sent, unclaimed rows (the partial sent index)
    that are scheduled for later. A correlated ``EXISTS`` per row was costed for every row a sort by state reads, and
    made PostgreSQL JIT-compile the statement (docs/performance.md#jobs-in-flight).
    """
    waiting = JobDispatch.objects.filter(claimed__isnull=True, owed__isnull=True, sent__isnull=False)
    scheduled = Job.objects.filter(
        pk__in=waiting.order_by().values('job_id'),
        status=JobStatusChoices.STATUS_SCHEDULED,
        scheduled__gt=DatabaseNow(),
    )
    return Q(job_id__in=scheduled.order_by().values('pk'))


def state_q(state, settings=None):
    """The rows in ``state`` (a ``JobDispatchStateChoices`` value), by the database's clock."""
    settings = settings or get_settings()
    S = JobDispatchStateChoices
    unclaimed = Q(claimed__isnull=True)
    lost_push = Q(owed__isnull=True, sent__isnull=True, created__lt=_ago(settings.unknown_push_age))
    if state == S.STATE_STUCK:
        return _stuck_q(settings.stuck_after)
    if state == S.STATE_GAVE_UP:
        return Q(gave_up__isnull=False)
    if state == S.STATE_CLAIMED:
        return Q(claimed__isnull=False, gave_up__isnull=True) & ~_stuck_q(settings.stuck_after)
    if state == S.STATE_OWED:
        return unclaimed & (Q(owed__isnull=False) | lost_push)
    if state == S.STATE_SENT:
        return unclaimed & Q(owed__isnull=True, sent__isnull=False) & ~_scheduled_q()
    if state == S.STATE_SCHEDULED:
        return unclaimed & Q(owed__isnull=True, sent__isnull=False) & _scheduled_q()
    if state == S.STATE_WRITTEN:
        return unclaimed & Q(owed__isnull=True, sent__isnull=True) & ~lost_push
    raise ValueError(f'unknown state {state!r}')


def state_expression(settings=None):
    """The state of each row, as one ``CASE`` (for showing and sorting; filters use ``state_q``)."""
    settings = settings or get_settings()
    S = JobDispatchStateChoices
    whens = []
    for state in STATE_ORDER:
        condition = state_q(state, settings)
        if state == S.STATE_SENT:
            # The first WHEN that matches wins, and the scheduled ones come before: a sent row's Job is not looked up
            # a second time.
            condition = Q(claimed__isnull=True, owed__isnull=True, sent__isnull=False)
        whens.append(When(condition, then=Value(state)))
    return Case(*whens, default=Value(S.STATE_WRITTEN), output_field=CharField())


def dispatch_queryset(queryset=None):
    """
    ``JobDispatch`` rows without their stored push, with ``dispatch_state`` (the model's ``state`` property
    knows neither threshold), ``age``, ``job_name``, ``job_scheduled`` (when a scheduled Job is due), their worker's
    heartbeat
    (``worker_seen``, ``worker_name``) and ``last_heartbeat`` (the newest of the lease's and its worker's).
    A ``RestrictedQuerySet``, for NetBox's views and viewsets.
    """
    if queryset is None:
        queryset = RestrictedQuerySet(model=JobDispatch)
    # Looked up per row shown (PostgreSQL evaluates these after the LIMIT), and left out of the page's count: a join
    # would be part of both.
    worker = WorkerHeartbeat.objects.filter(pk=OuterRef('worker')).order_by()
    job = Job.objects.filter(pk=OuterRef('job_id')).order_by()
    return queryset.defer('payload').annotate(
        dispatch_state=state_expression(),
        # A webhook has no Job: its row names it.
        job_name=Coalesce(Subquery(job.values('name')[:1]), F('name')),
        job_scheduled=Subquery(job.values('scheduled')[:1]),
        age=ExpressionWrapper(DatabaseNow() - F('created'), output_field=DurationField()),
        worker_seen=Subquery(worker.values('seen')[:1]),
        worker_name=Subquery(worker.values('name')[:1]),
    ).annotate(
        # PostgreSQL's GREATEST ignores NULLs: a lease not yet heartbeated shows its worker's heartbeat.
        last_heartbeat=Greatest('heartbeat', 'worker_seen'),
    )


def state_counts(queryset, states=STATE_ORDER):
    """``{state: number of rows}`` of ``queryset`` (one ``count()`` per state)."""
    settings = get_settings()
    return {state: queryset.filter(state_q(state, settings)).count() for state in states}

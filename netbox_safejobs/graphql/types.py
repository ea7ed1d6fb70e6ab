"""GraphQL types of retry events, of jobs in flight and of the job they are about."""

from datetime import datetime

import strawberry_django
from core.models import Job
from netbox.graphql.types import BaseObjectType
from utilities.querysets import RestrictedQuerySet

from .. import compat
from ..in_flight import dispatch_queryset
from ..models import JobDispatch, RetryEvent
from .filters import JobDispatchFilter, RetryEventFilter

__all__ = (
    'JobDispatchType',
    'RetryEventJobType',
    'RetryEventType',
)


@strawberry_django.type(
    Job,
    name='SafeJobsJob',
    fields=['id', 'job_id', 'name', 'status', 'created', 'scheduled', 'started', 'completed', 'error'],
)
class RetryEventJobType(BaseObjectType):
    """
    NetBox's Job as seen from a retry event. NetBox has no GraphQL type for ``core.Job``; this one is the plugin's
    own (not registered as the model's type), restricted by the user's permission to view jobs like every type.
    """


@compat.graphql_type(
    RetryEvent,
    fields=[
        'id', 'time', 'kind', 'job', 'job_uuid', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'detail',
        'worker_host', 'worker_pid',
    ],
    filters=RetryEventFilter,
    pagination=True,
)
class RetryEventType(BaseObjectType):
    # The Job while its row exists (null afterwards); job_uuid and job_name always identify the job.
    job: RetryEventJobType | None


@compat.graphql_type(
    JobDispatch,
    # Never the stored push (``payload``) nor the lease's attempt token.
    fields=[
        'id', 'job', 'job_uuid', 'name', 'runner', 'queue_name', 'method', 'created', 'sent', 'owed', 'claimed',
        'gave_up', 'recoveries', 'failures', 'worker', 'worker_host', 'worker_pid', 'heartbeat',
    ],
    filters=JobDispatchFilter,
    pagination=True,
)
class JobDispatchType(BaseObjectType):
    """
    A job in flight, as the list page and the REST API show it: its state, age and its worker's heartbeat are
    computed by the database (``in_flight.dispatch_queryset``), restricted to the rows the user may view.
    """
    # The Job for a user who may view it (null otherwise, and for an event rule's webhook, which has none).
    job: RetryEventJobType | None

    @classmethod
    def get_queryset(cls, queryset, info, **kwargs):
        # The model's manager is Django's own (the worker's hot path needs nothing more): restricted as every NetBox
        # type is, through a RestrictedQuerySet of the same query.
        queryset = RestrictedQuerySet(model=queryset.model, query=queryset.query.chain(), using=queryset.db)
        return dispatch_queryset(super().get_queryset(queryset, info, **kwargs))

    @strawberry_django.field(description='written, sent, scheduled, owed, claimed, stuck or gave_up')
    def state(self) -> str:
        return self.dispatch_state

    @strawberry_django.field(description="The Job's name, or the webhook's")
    def job_name(self) -> str:
        return self.job_name

    @strawberry_django.field(description='Seconds since the job was enqueued (database clock)')
    def age(self) -> float | None:
        return round(self.age.total_seconds(), 3) if self.age is not None else None

    @strawberry_django.field(description="The Job's scheduled time: when a job in the state scheduled is due")
    def scheduled(self) -> datetime | None:
        return self.job_scheduled

    @strawberry_django.field(description="The worker's name, while it heartbeats")
    def worker_name(self) -> str | None:
        return self.worker_name

    @strawberry_django.field(description="The worker's last heartbeat")
    def worker_seen(self) -> datetime | None:
        return self.worker_seen

    @strawberry_django.field(description="The newer of the lease's and its worker's heartbeats")
    def last_heartbeat(self) -> datetime | None:
        return self.last_heartbeat

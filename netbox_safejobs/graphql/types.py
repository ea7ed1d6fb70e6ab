"""GraphQL types of retry events and of the job they are about."""

import strawberry_django
from core.models import Job
from netbox.graphql.types import BaseObjectType

from .. import compat
from ..models import RetryEvent
from .filters import RetryEventFilter

__all__ = (
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

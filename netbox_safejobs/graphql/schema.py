"""
GraphQL queries of the plugin: ``netbox_safejobs_retry_event`` and ``netbox_safejobs_retry_event_list``,
``netbox_safejobs_job_in_flight`` and ``netbox_safejobs_job_in_flight_list``.
"""

import strawberry
import strawberry_django

from .types import JobDispatchType, RetryEventType

__all__ = (
    'SafeJobsQuery',
    'schema',
)


@strawberry.type(name='Query')
class SafeJobsQuery:
    netbox_safejobs_retry_event: RetryEventType = strawberry_django.field()
    netbox_safejobs_retry_event_list: list[RetryEventType] = strawberry_django.field()
    netbox_safejobs_job_in_flight: JobDispatchType = strawberry_django.field()
    netbox_safejobs_job_in_flight_list: list[JobDispatchType] = strawberry_django.field()


schema = [
    SafeJobsQuery,
]

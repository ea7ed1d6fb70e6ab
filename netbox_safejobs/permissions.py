"""
Which Jobs a user may see through a retry event: those NetBox's own Job pages and API show them (``core.view_job``
and its constraints). The pages, the REST API and GraphQL all follow this one rule; the event itself keeps
``job_uuid`` and ``job_name`` for everyone who may view it.
"""

from core.models import Job

__all__ = (
    'viewable_job_ids',
    'viewable_jobs',
)


def viewable_jobs(user):
    """The Jobs ``user`` may view: NetBox's restricted queryset (none, without a query, without the permission)."""
    return Job.objects.restrict(user, 'view')


def viewable_job_ids(user, job_ids):
    """
    The IDs among ``job_ids`` of the Jobs ``user`` may view: one query, none for a superuser (the events' foreign key
    is nulled when a Job is deleted, so every ID refers to an existing Job) or for a user without the permission.
    """
    ids = {pk for pk in job_ids if pk}
    if not ids or user is None:
        return set()
    if user.is_superuser:
        return ids
    return set(viewable_jobs(user).filter(pk__in=ids).values_list('pk', flat=True))

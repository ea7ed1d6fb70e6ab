"""
REST API of retry events (list and detail, read-only, plus delete) and of jobs in flight (read-only, plus stopping
running jobs), each filtered by the same filter set as its UI page.
"""

from core.models import Job
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from netbox.api.viewsets import NetBoxReadOnlyModelViewSet
from rest_framework.decorators import action
from rest_framework.exceptions import MethodNotAllowed, ValidationError
from rest_framework.mixins import DestroyModelMixin
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.routers import APIRootView
from rest_framework.settings import api_settings
from utilities.querysets import RestrictedQuerySet

from .. import filtersets, stopping
from ..bounded_count import bounded_count
from ..in_flight import dispatch_queryset
from ..models import JobDispatch, RetryEvent
from ..permissions import viewable_jobs
from .serializers import JobDispatchSerializer, RetryEventSerializer, StopRequestSerializer, StopResultSerializer

__all__ = (
    'BoundedCountPagination',
    'JobDispatchViewSet',
    'RetryEventPagination',
    'RetryEventViewSet',
    'SafeJobsRootView',
    'StopPermission',
)


class SafeJobsRootView(APIRootView):
    """netbox-safejobs API root view"""

    # Endpoints that are not a viewset of the router (``urls.py``), listed with those: {key: URL name}.
    other_endpoints = {'health': 'health'}

    def get_view_name(self):
        return 'Safe Jobs'

    def get(self, request, *args, **kwargs):
        # Alphabetically, as NetBox's router lists its viewsets.
        self.api_root_dict = dict(sorted({**self.api_root_dict, **self.other_endpoints}.items()))
        return super().get(request, *args, **kwargs)


class BoundedCountPagination(api_settings.DEFAULT_PAGINATION_CLASS):
    """
    NetBox's pagination, with the list page's bounded count (``bounded_count.BoundedCountPaginator``): ``count`` is
    exact up to the next multiple of ``COUNT_STEP`` past the end of the page asked for (``offset + limit``), and that
    bound when more events match, so that a page of a million events does not cost a pass over all of them. ``next``
    is set whenever more events follow. Without a limit (``limit=0`` where allowed) every row is read: exact.
    ``count_in_page_order``: see ``bounded_count.bounded_count``.
    """
    count_in_page_order = False

    def paginate_queryset(self, queryset, request, view=None):
        # NetBox 4.2 - 4.5 count before they set ``self.request`` and read its limit: the count reads them itself.
        self.request = request
        return super().paginate_queryset(queryset, request, view)

    def get_queryset_count(self, queryset):
        limit = self.get_limit(self.request)
        if not limit:
            return super().get_queryset_count(queryset)
        return int(bounded_count(queryset, self.get_offset(self.request) + limit, self.count_in_page_order))


class RetryEventPagination(BoundedCountPagination):
    """Retry events are counted in the page's order, as on the list page (``RetryEventTable``)."""
    count_in_page_order = True


class RetryEventViewSet(DestroyModelMixin, NetBoxReadOnlyModelViewSet):
    """
    Retry events of background jobs. Events are written by netbox-safejobs only: they can be read and deleted,
    never created or changed.
    """
    queryset = RetryEvent.objects.all()
    serializer_class = RetryEventSerializer
    filterset_class = filtersets.RetryEventFilterSet
    pagination_class = RetryEventPagination
    # ``?ordering=`` by the columns the list page sorts by, each read from an index (not by the detail text).
    ordering_fields = (
        'id', 'time', 'kind', 'job', 'job_uuid', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'worker_host',
        'worker_pid',
    )

    def initial(self, request, *args, **kwargs):
        # A method this endpoint does not offer (POST, PUT, PATCH) is a 405 for everyone, before any permission
        # check would turn it into a 403 for users without "add" or "change" permission.
        if request.method.lower() not in ('options', 'head') and not hasattr(self, request.method.lower()):
            raise MethodNotAllowed(request.method)
        super().initial(request, *args, **kwargs)

    def get_queryset(self):
        """
        The nested ``job`` comes only from the Jobs the user may view (``core.view_job`` and its constraints): it is
        prefetched from them, so it is null for any other job, as in GraphQL and the UI, while ``job_uuid`` and
        ``job_name`` still identify the job. One query per page; none without the permission.
        """
        queryset = super().get_queryset()
        if self.brief:  # the brief representation has no job
            return queryset
        jobs = Prefetch('job', queryset=viewable_jobs(self.request.user))
        # NetBox's own lookup of the same path would clash with this one; those below it (job__...) go through it.
        others = [lookup for lookup in queryset._prefetch_related_lookups if _lookup_path(lookup) != 'job']
        return queryset.prefetch_related(None).prefetch_related(jobs, *others)


class StopPermission(BasePermission):
    """
    Stopping jobs: the permission to stop jobs (``core.stop_job``; its constraints select the jobs), and, with a token,
    one that may write, as NetBox requires of every unsafe method.
    """
    message = 'This user may not stop jobs (permission "stop" on core | job, with a write-enabled token).'

    def has_permission(self, request, view):
        if not request.user.is_authenticated:
            return False
        if request.auth is not None and getattr(request.auth, 'write_enabled', True) is False:
            return False
        return request.user.has_perm('core.stop_job')


def _stop_request(request, jobs_required):
    data = StopRequestSerializer(data=request.data if isinstance(request.data, dict) else {'jobs': None})
    data.is_valid(raise_exception=True)
    if jobs_required and 'jobs' not in data.validated_data:
        raise ValidationError({'jobs': ['A non-empty list of Job IDs is required.']})
    return data.validated_data


def _stop(request, jobs, next_run):
    results = [stopping.request_stop(job, user=request.user, next_run=next_run) for job in jobs]
    return [{'job': result.job_id, 'outcome': result.outcome, 'message': result.message, 'worker': result.worker}
            for result in results]


class JobDispatchViewSet(NetBoxReadOnlyModelViewSet):
    """
    Jobs in flight: the outbox and leases of netbox-safejobs, oldest first, with their state by the database's clock.
    Read-only but for stopping running jobs; the stored push is never part of a response.
    """
    queryset = RestrictedQuerySet(model=JobDispatch).defer('payload')
    serializer_class = JobDispatchSerializer
    filterset_class = filtersets.JobDispatchFilterSet

    def get_permissions(self):
        if self.action in ('stop', 'stop_jobs'):
            return [StopPermission()]
        return super().get_permissions()

    @extend_schema(request=StopRequestSerializer, responses={200: StopResultSerializer},
                   operation_id='plugins_safejobs_jobs_in_flight_stop_one')
    @action(detail=True, methods=['post'])
    def stop(self, request, pk):
        """
        Stop the running job of this job in flight. Body (optional): ``{"next_run": false}`` to give a periodic job no
        next run. Answers with the outcome (``stopping``, ``already_stopping``, ``not_running``, ``no_worker``,
        ``not_guarded``) and a message; a job that is not running is not an error.
        """
        row = get_object_or_404(RestrictedQuerySet(model=JobDispatch).restrict(request.user, 'view'), pk=pk)
        job = get_object_or_404(Job.objects.restrict(request.user, 'stop'), pk=row.job_id)
        return Response(_stop(request, [job], _stop_request(request, False)['next_run'])[0])

    @extend_schema(request=StopRequestSerializer, responses={200: StopResultSerializer(many=True)},
                   operation_id='plugins_safejobs_jobs_in_flight_stop')
    @action(detail=False, methods=['post'], url_path='stop')
    def stop_jobs(self, request):
        """
        Stop running jobs by their Job IDs: ``{"jobs": [1, 2], "next_run": true}``. One result per job the user may
        stop; IDs of other jobs are answered ``not_found``.
        """
        wanted = _stop_request(request, True)
        ids, next_run = wanted['jobs'], wanted['next_run']
        jobs = {job.pk: job for job in Job.objects.restrict(request.user, 'stop').filter(pk__in=ids)}
        found = _stop(request, [jobs[pk] for pk in sorted(jobs)], next_run)
        missing = [{'job': pk, 'outcome': 'not_found', 'message': f'No job {pk} that you may stop.', 'worker': ''}
                   for pk in dict.fromkeys(ids) if pk not in jobs]
        return Response(found + missing)

    def get_queryset(self):
        """Annotated per request (the state's thresholds are settings); the nested job as for retry events."""
        queryset = dispatch_queryset(super().get_queryset())
        if self.brief:
            return queryset
        jobs = Prefetch('job', queryset=viewable_jobs(self.request.user))
        others = [lookup for lookup in queryset._prefetch_related_lookups if _lookup_path(lookup) != 'job']
        return queryset.prefetch_related(None).prefetch_related(jobs, *others)


def _lookup_path(lookup):
    return lookup if isinstance(lookup, str) else lookup.prefetch_through

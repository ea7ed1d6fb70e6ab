"""
REST API of retry events (list and detail, read-only, plus delete) and of jobs in flight (read-only), each filtered by
the same filter set as its UI page.
"""

from django.db.models import Prefetch
from netbox.api.viewsets import NetBoxReadOnlyModelViewSet
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.mixins import DestroyModelMixin
from rest_framework.routers import APIRootView
from rest_framework.settings import api_settings
from utilities.querysets import RestrictedQuerySet

from .. import filtersets, tables
from ..in_flight import dispatch_queryset
from ..models import JobDispatch, RetryEvent
from ..permissions import viewable_jobs
from .serializers import JobDispatchSerializer, RetryEventSerializer

__all__ = (
    'BoundedCountPagination',
    'JobDispatchViewSet',
    'RetryEventPagination',
    'RetryEventViewSet',
    'SafeJobsRootView',
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
    NetBox's pagination, with the list page's bounded count (``tables.BoundedCountPaginator``): ``count`` is exact up
    to the next multiple of ``tables.COUNT_STEP`` past the end of the page asked for (``offset + limit``), and that
    bound when more events match, so that a page of a million events does not cost a pass over all of them. ``next``
    is set whenever more events follow. Without a limit (``limit=0`` where allowed) every row is read: exact.
    ``count_in_page_order``: see ``tables.bounded_count``.
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
        return int(tables.bounded_count(queryset, self.get_offset(self.request) + limit, self.count_in_page_order))


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


class JobDispatchViewSet(NetBoxReadOnlyModelViewSet):
    """
    Jobs in flight: the outbox and leases of netbox-safejobs, oldest first, with their state by the database's clock.
    Read-only; the stored push is never part of a response.
    """
    queryset = RestrictedQuerySet(model=JobDispatch).defer('payload')
    serializer_class = JobDispatchSerializer
    filterset_class = filtersets.JobDispatchFilterSet

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

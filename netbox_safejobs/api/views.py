"""REST API of retry events: list and detail (read-only) plus delete, filtered by the same filter set as the UI."""

from netbox.api.viewsets import NetBoxReadOnlyModelViewSet
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.mixins import DestroyModelMixin
from rest_framework.routers import APIRootView

from .. import filtersets
from ..models import RetryEvent
from .serializers import RetryEventSerializer

__all__ = (
    'RetryEventViewSet',
    'SafeJobsRootView',
)


class SafeJobsRootView(APIRootView):
    """netbox-safejobs API root view"""

    def get_view_name(self):
        return 'Safe Jobs'


class RetryEventViewSet(DestroyModelMixin, NetBoxReadOnlyModelViewSet):
    """
    Retry events of background jobs. Events are written by netbox-safejobs only: they can be read and deleted,
    never created or changed.
    """
    queryset = RetryEvent.objects.all()
    serializer_class = RetryEventSerializer
    filterset_class = filtersets.RetryEventFilterSet

    def initial(self, request, *args, **kwargs):
        # A method this endpoint does not offer (POST, PUT, PATCH) is a 405 for everyone, before any permission
        # check would turn it into a 403 for users without "add" or "change" permission.
        if request.method.lower() not in ('options', 'head') and not hasattr(self, request.method.lower()):
            raise MethodNotAllowed(request.method)
        super().initial(request, *args, **kwargs)

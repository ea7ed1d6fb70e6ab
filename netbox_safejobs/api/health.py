"""``/api/plugins/safejobs/health/``: the report of ``netbox safejobs_check``, as JSON, for monitoring."""

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from ..health import COVERAGE_MAX_AGE, check, may_view_health

__all__ = (
    'HealthView',
)


class HealthView(APIView):
    """
    The installation's health: workers without the plugin, mixed releases, unapplied migrations, Redis eviction and
    persistence, clock skew, the backlog, the settings. ``status`` is ok, warning or error (``exit_code`` 0, 1, 2, as
    the command's); each finding names its fix. For users NetBox shows Background Tasks and users who may view worker
    heartbeats.
    """
    permission_classes = (IsAuthenticated,)

    def get_view_name(self):
        return 'Safe Jobs health'

    def get(self, request):
        if not may_view_health(request):
            raise PermissionDenied('Staff users, superusers and users who may view worker heartbeats see the health '
                                   'report.')
        return Response(check(coverage_max_age=COVERAGE_MAX_AGE).as_dict())

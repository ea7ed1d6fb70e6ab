"""REST API URLs, under /api/plugins/safejobs/."""

from django.urls import path
from netbox.api.routers import NetBoxRouter

from . import views
from .health import HealthView

__all__ = (
    'urlpatterns',
)

app_name = 'netbox_safejobs-api'

router = NetBoxRouter()
router.APIRootView = views.SafeJobsRootView
router.register('retry-events', views.RetryEventViewSet)
router.register('jobs-in-flight', views.JobDispatchViewSet)

urlpatterns = [
    *router.urls,
    path('health/', HealthView.as_view(), name='health'),
]

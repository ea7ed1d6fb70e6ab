"""REST API URLs, under /api/plugins/safejobs/."""

from netbox.api.routers import NetBoxRouter

from . import views

__all__ = (
    'urlpatterns',
)

app_name = 'netbox_safejobs-api'

router = NetBoxRouter()
router.APIRootView = views.SafeJobsRootView
router.register('retry-events', views.RetryEventViewSet)

urlpatterns = router.urls

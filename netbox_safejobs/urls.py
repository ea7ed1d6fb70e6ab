"""URLs of the plugin's pages, under /plugins/safejobs/."""

from django.urls import include, path
from utilities.urls import get_model_urls

from . import views  # (also registers the model views)

__all__ = (
    'urlpatterns',
)

urlpatterns = (
    path('retry-events/', include(get_model_urls('netbox_safejobs', 'retryevent', detail=False))),
    path('retry-events/<int:pk>/', include(get_model_urls('netbox_safejobs', 'retryevent'))),
    path('jobs-in-flight/', include(get_model_urls('netbox_safejobs', 'jobdispatch', detail=False))),
    path('jobs-in-flight/<int:pk>/', include(get_model_urls('netbox_safejobs', 'jobdispatch'))),
    # Stopping a running job, from NetBox's Job page or a job in flight (by the Job's ID).
    path('jobs/<int:pk>/stop/', views.JobStopView.as_view(), name='job_stop'),
)

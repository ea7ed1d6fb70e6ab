"""
The retry events of a job on NetBox's own Job page.

Rendered through the template extension's ``alerts()``: the Job page of every supported NetBox (4.2 to 4.7) renders
plugin alerts, while its left/right/full-width plugin slots exist only on the panel layouts of 4.6+. Nothing is shown
for a job without events, nor to a user who may not view events.
"""

from django.urls import reverse
from netbox.plugins import PluginTemplateExtension

from .models import RetryEvent
from .tables import JobRetryEventTable

__all__ = (
    'JobRetryEvents',
    'template_extensions',
)

PANEL_EVENTS = 10


class JobRetryEvents(PluginTemplateExtension):
    models = ['core.job']

    def alerts(self):
        job = self.context.get('object')
        request = self.context.get('request')
        if job is None or request is None or not getattr(job, 'job_id', None):
            return ''
        if not request.user.has_perm('netbox_safejobs.view_retryevent'):
            return ''
        # The job_uuid index answers both queries, whatever the number of events.
        events = RetryEvent.objects.restrict(request.user, 'view').filter(job_uuid=job.job_id)
        shown = list(events[:PANEL_EVENTS])
        if not shown:
            return ''
        count = len(shown) if len(shown) < PANEL_EVENTS else events.count()
        table = JobRetryEventTable(shown, orderable=False)
        list_url = reverse('plugins:netbox_safejobs:retryevent_list')
        return self.render('netbox_safejobs/inc/job_panel.html', extra_context={
            'safejobs_table': table,
            'safejobs_count': count,
            'safejobs_shown': len(shown),
            'safejobs_url': f'{list_url}?job_uuid={job.job_id}',
        })


template_extensions = [JobRetryEvents]

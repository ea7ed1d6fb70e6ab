"""
The retry events of a job, and a Stop button while it runs, on NetBox's own Job page.

Rendered through the template extension's ``alerts()``: the Job page of every supported NetBox (4.2 to 4.7) renders
plugin alerts, while its left/right/full-width plugin slots exist only on the panel layouts of 4.6+. Nothing is shown
for a job without events, nor to a user who may not view events.
"""

from django.urls import reverse
from netbox.plugins import PluginTemplateExtension

from .choices import RUNNING
from .job_events import job_events

__all__ = (
    'JobRetryEvents',
    'template_extensions',
)

class JobRetryEvents(PluginTemplateExtension):
    models = ['core.job']

    def alerts(self):
        job = self.context.get('object')
        request = self.context.get('request')
        if job is None or request is None or not getattr(job, 'job_id', None):
            return ''
        if not request.user.has_perm('netbox_safejobs.view_retryevent'):
            return ''
        events = job_events(request.user, job.job_id)
        if not events.shown:
            return ''
        return self.render('netbox_safejobs/inc/job_panel.html', extra_context={'safejobs_events': events})

    def buttons(self):
        # Stop (``stopping.py``): for a running job, to a user who may stop it (``core.stop_job`` and its constraints).
        job = self.context.get('object')
        request = self.context.get('request')
        if job is None or request is None or getattr(job, 'status', None) != RUNNING:
            return ''
        if not request.user.has_perm('core.stop_job', job):
            return ''
        return self.render('netbox_safejobs/buttons/stop.html', extra_context={
            'stop_url': reverse('plugins:netbox_safejobs:job_stop', kwargs={'pk': job.pk}),
            'return_url': request.path,
        })


template_extensions = [JobRetryEvents]

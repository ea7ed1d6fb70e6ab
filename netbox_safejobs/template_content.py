"""
The retry events of a job on NetBox's own Job page.

Rendered through the template extension's ``alerts()``: the Job page of every supported NetBox (4.2 to 4.7) renders
plugin alerts, while its left/right/full-width plugin slots exist only on the panel layouts of 4.6+. Nothing is shown
for a job without events, nor to a user who may not view events.
"""

from netbox.plugins import PluginTemplateExtension

from .tables import job_events

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


template_extensions = [JobRetryEvents]

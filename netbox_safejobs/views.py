"""
The retry event pages: list (with filters, export and bulk delete), detail and delete. NetBox generic views, so the
pages look and behave like core pages; every queryset is restricted to the user's object permissions.
"""

import yaml
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.http import content_disposition_header
from netbox.views import generic
from utilities.views import register_model_view

from . import compat, filtersets, forms, tables
from .models import RetryEvent
from .permissions import viewable_jobs

__all__ = (
    'RetryEventBulkDeleteView',
    'RetryEventDeleteView',
    'RetryEventListView',
    'RetryEventView',
    'event_as_dict',
)

# Fields of an exported event, in this order.
EXPORT_FIELDS = (
    'id', 'time', 'kind', 'job_id', 'job_uuid', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'detail',
    'worker_host', 'worker_pid',
)
RELATED_EVENTS_SHOWN = 10
# What the event page shows of its Job.
JOB_FIELDS_SHOWN = ('pk', 'name', 'status', 'created', 'started', 'completed')


def event_as_dict(values):
    """One event (a ``values()`` row) as plain YAML-safe data."""
    data = dict(values)
    data['time'] = data['time'].isoformat()
    data['job_uuid'] = str(data['job_uuid'])
    data['job'] = data.pop('job_id')
    return data


@register_model_view(RetryEvent, 'list', path='', detail=False)
class RetryEventListView(generic.ObjectListView):
    queryset = RetryEvent.objects.all()
    filterset = filtersets.RetryEventFilterSet
    filterset_form = forms.RetryEventFilterForm
    table = tables.RetryEventTable
    template_name = 'netbox_safejobs/retryevent_list.html'
    actions = compat.view_actions('export', 'bulk_delete')

    def get(self, request):
        if request.GET.get('export') == 'yaml':
            return self.export_events_yaml(request)
        return super().get(request)

    def export_table(self, table, columns=None, *args, **kwargs):
        # The CSV of the current view keeps the job's UUID even where the column is hidden: the job's name alone does
        # not tell its runs apart. (The other exports have every field.)
        if columns and 'job_uuid' not in columns:
            columns = [*columns, 'job_uuid']
        return super().export_table(table, columns, *args, **kwargs)

    def export_events_yaml(self, request):
        """
        All events matching the filters as YAML documents (RetryEvent is a plain model without ``to_yaml()``, so
        NetBox's own "all data" export is CSV). Streamed: an export of a million events does not sit in memory.
        """
        queryset = self.filterset(request.GET, self.get_queryset(request), request=request).qs

        def documents():
            for values in queryset.values(*EXPORT_FIELDS).iterator(chunk_size=2000):
                yield '---\n' + yaml.safe_dump(event_as_dict(values), sort_keys=False)

        response = StreamingHttpResponse(documents(), content_type='text/yaml')
        response['Content-Disposition'] = content_disposition_header(
            as_attachment=True, filename=f'netbox_{RetryEvent._meta.verbose_name_plural}.yaml'
        )
        return response


@register_model_view(RetryEvent)
class RetryEventView(generic.ObjectView):
    queryset = RetryEvent.objects.all()
    template_name = 'netbox_safejobs/retryevent.html'
    actions = compat.view_actions('delete')

    def get_extra_context(self, request, instance):
        # The other events of the same job, newest first: the job_uuid index answers this.
        related = RetryEvent.objects.restrict(request.user, 'view').filter(job_uuid=instance.job_uuid)
        related_count = related.count()
        table = tables.JobRetryEventTable(list(related[:RELATED_EVENTS_SHOWN]), orderable=False)
        list_url = reverse('plugins:netbox_safejobs:retryevent_list')
        # The job as it is now, for a user who may view it: its Job page and current status.
        job = None
        if instance.job_id:
            job = viewable_jobs(request.user).filter(pk=instance.job_id).only(*JOB_FIELDS_SHOWN).first()
        return {
            'job': job,
            'job_url': reverse('core:job', kwargs={'pk': job.pk}) if job else None,
            # RQ's task of the job (its ID is the job's UUID) in NetBox's Background Tasks, for whom NetBox shows them.
            # Not looked up in Redis: this page must answer while Redis does not; the task page says if RQ dropped it.
            'rq_task_url': (reverse('core:background_task', kwargs={'job_id': str(instance.job_uuid)})
                            if compat.may_view_background_tasks(request) else None),
            'related_table': table,
            'related_count': related_count,
            'related_shown': min(related_count, RELATED_EVENTS_SHOWN),
            'related_url': f'{list_url}?job_uuid={instance.job_uuid}',
            'list_url': list_url,
        }


@register_model_view(RetryEvent, 'delete')
class RetryEventDeleteView(generic.ObjectDeleteView):
    queryset = RetryEvent.objects.all()

    def get_return_url(self, request, obj=None):
        # "Cancel" goes back to the event; after the deletion (no pk any more) to the list, or to return_url.
        if obj is not None and obj.pk and not (request.GET.get('return_url') or request.POST.get('return_url')):
            return reverse('plugins:netbox_safejobs:retryevent', kwargs={'pk': obj.pk})
        return super().get_return_url(request)


@register_model_view(RetryEvent, 'bulk_delete', path='delete', detail=False)
class RetryEventBulkDeleteView(generic.BulkDeleteView):
    queryset = RetryEvent.objects.all()
    filterset = filtersets.RetryEventFilterSet
    table = tables.RetryEventTable

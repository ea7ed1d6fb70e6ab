"""
The retry event pages (list with filters, export and bulk delete; detail; delete) and the pages of jobs in flight
(list and detail, read-only but for sending a webhook that gave up again). NetBox generic views, so the pages look and
behave like core pages; every queryset is restricted to the user's object permissions.
"""

import yaml
from core.models import Job
from django.contrib import messages
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.views.generic import View
from netbox.views import generic
from utilities.querysets import RestrictedQuerySet
from utilities.views import GetReturnURLMixin, ObjectPermissionRequiredMixin, register_model_view

from . import compat, filtersets, forms, stopping, tables, webhooks
from .choices import RUNNING, JobDispatchStateChoices, kind_help, state_help
from .in_flight import dispatch_queryset
from .job_events import job_events
from .markup import help_html
from .models import JobDispatch, RetryEvent
from .permissions import viewable_jobs
from .settings import get_settings

__all__ = (
    'JobDispatchBulkStopView',
    'JobDispatchListView',
    'JobDispatchResendView',
    'JobDispatchView',
    'JobStopView',
    'RetryEventBulkDeleteView',
    'RetryEventDeleteView',
    'RetryEventListView',
    'RetryEventView',
    'SafeReturnURLMixin',
    'event_as_dict',
)

# Fields of an exported event, in this order.
EXPORT_FIELDS = (
    'id', 'time', 'kind', 'job_id', 'job_uuid', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'detail',
    'worker_host', 'worker_pid',
)
# Stopping a running job: action "stop" on core | job (registered as a checkbox of the permission form where NetBox
# offers one, ``compat.register_stop_action``).
STOP_PERMISSION = 'core.stop_job'

# What the event page shows of its Job.
JOB_FIELDS_SHOWN = ('pk', 'name', 'status', 'created', 'started', 'completed')


def event_as_dict(values):
    """One event (a ``values()`` row) as plain YAML-safe data."""
    data = dict(values)
    data['time'] = data['time'].isoformat()
    data['job_uuid'] = str(data['job_uuid'])
    data['job'] = data.pop('job_id')
    return data


class SafeReturnURLMixin:
    """
    A ``return_url`` (query string or form) that fails NetBox's own check (``compat.safe_for_redirect``: another host,
    a ``javascript:`` or ``//host`` URL) is dropped before the view sees it: it is neither shown as the Cancel link nor
    redirected to, and the view's own return URL is used. Checked once here, for every path a view (or NetBox's
    generic view it extends) reads it by.
    """

    def dispatch(self, request, *args, **kwargs):
        for method in ('GET', 'POST'):
            data = getattr(request, method)
            url = data.get('return_url')
            if url and not compat.safe_for_redirect(url):
                data = data.copy()
                data.pop('return_url')
                setattr(request, method, data)
        return super().dispatch(request, *args, **kwargs)


class FilterErrorsMixin:
    """
    A list page that says, above its table, which filter values it refused and how to correct them: such a filter
    selects no row (``filtersets.RefuseInvalidMixin``), where NetBox's lists leave it out and list every row.
    """

    def filter_errors(self, request):
        """``{'errors': [(label, messages)], 'clear_url': the list without those filters}``, or None."""
        filterset = self.filterset(request.GET, self.queryset.none(), request=request)
        if not filterset.errors:
            return None
        fields = filterset.form.fields
        query = request.GET.copy()
        for name in filterset.errors:
            for key in list(query):
                if key == name or key.startswith(f'{name}__'):
                    del query[key]
        return {
            'errors': [(fields[name].label if name in fields else name, errors)
                       for name, errors in filterset.errors.items()],
            'clear_url': f'{request.path}?{query.urlencode()}' if query else request.path,
        }


@register_model_view(RetryEvent, 'list', path='', detail=False)
class RetryEventListView(FilterErrorsMixin, generic.ObjectListView):
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

    def get_extra_context(self, request):
        return {'filter_errors': self.filter_errors(request)}

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
        list_url = reverse('plugins:netbox_safejobs:retryevent_list')
        # The job as it is now, for a user who may view it: its Job page and current status.
        job = None
        if instance.job_id:
            job = viewable_jobs(request.user).filter(pk=instance.job_id).only(*JOB_FIELDS_SHOWN).first()
        return {
            'kind_help': {key: help_html(text) for key, text in kind_help(instance.kind).items()},
            'job': job,
            'job_url': reverse('core:job', kwargs={'pk': job.pk}) if job else None,
            # RQ's task of the job (its ID is the job's UUID) in NetBox's Background Tasks, for whom NetBox shows them.
            # Not looked up in Redis: this page must answer while Redis does not; the task page says if RQ dropped it.
            'rq_task_url': (reverse('core:background_task', kwargs={'job_id': str(instance.job_uuid)})
                            if compat.may_view_background_tasks(request) else None),
            # The events of the same job, newest first, as the panel on its Job page shows them.
            'related': job_events(request.user, instance.job_uuid),
            'list_url': list_url,
        }


@register_model_view(RetryEvent, 'delete')
class RetryEventDeleteView(SafeReturnURLMixin, generic.ObjectDeleteView):
    # NetBox's own return URL: a safe return_url, else the event ("Cancel"), else, once deleted, the list.
    queryset = RetryEvent.objects.all()


@register_model_view(RetryEvent, 'bulk_delete', path='delete', detail=False)
class RetryEventBulkDeleteView(SafeReturnURLMixin, generic.BulkDeleteView):
    queryset = RetryEvent.objects.all()
    filterset = filtersets.RetryEventFilterSet
    table = tables.RetryEventTable


#
# Jobs in flight
#

@register_model_view(JobDispatch, 'list', path='', detail=False)
class JobDispatchListView(FilterErrorsMixin, generic.ObjectListView):
    """
    The outbox and leases, oldest first: read-only (no bulk actions), CSV export of the table only. NetBox's export
    templates are refused here: they would render the queryset, stored push included.
    """
    queryset = RestrictedQuerySet(model=JobDispatch).defer('payload')
    filterset = filtersets.JobDispatchFilterSet
    filterset_form = forms.JobDispatchFilterForm
    table = tables.JobDispatchTable
    template_name = 'netbox_safejobs/jobdispatch_list.html'
    actions = compat.view_actions('export')

    def get_queryset(self, request):
        # Annotated per request: the state's thresholds are settings, compared with the database's clock.
        return dispatch_queryset(super().get_queryset(request))

    def get(self, request):
        if request.GET.get('export') not in (None, '', 'table'):
            raise Http404('Export templates are not available for jobs in flight')
        return super().get(request)

    def get_permitted_actions(self, user, model=None):
        # "Stop selected" needs the stop permission on jobs (``core.stop_job``), not one of this list's model.
        actions = list(super().get_permitted_actions(user, model))
        if user.has_perm(STOP_PERMISSION):
            actions.append(compat.bulk_stop_action())
        return actions

    def get_extra_context(self, request):
        settings = get_settings()
        return {
            'stuck_after': settings.stuck_after,
            'unknown_push_age': settings.unknown_push_age,
            'filter_errors': self.filter_errors(request),
            # Every state, in the order a job goes through them, with what it means and what to do.
            'states': [
                {'value': value, 'label': label, 'color': color,
                 **{key: help_html(text) for key, text in state_help(value, settings).items()}}
                for value, label, color in JobDispatchStateChoices.CHOICES
            ],
        }


@register_model_view(JobDispatch)
class JobDispatchView(generic.ObjectView):
    """One job in flight: state, timestamps, its worker's heartbeat, its job (for who may view it), its events."""
    queryset = RestrictedQuerySet(model=JobDispatch).defer('payload')
    template_name = 'netbox_safejobs/jobdispatch.html'
    actions = compat.view_actions()

    def get_queryset(self, request):
        return dispatch_queryset(super().get_queryset(request))

    def get_extra_context(self, request, instance):
        job = viewable_jobs(request.user).filter(pk=instance.job_id).only(*JOB_FIELDS_SHOWN).first()
        events = None
        if request.user.has_perm('netbox_safejobs.view_retryevent'):
            events = RetryEvent.objects.restrict(request.user, 'view').filter(job_uuid=instance.job_uuid)
        list_url = reverse('plugins:netbox_safejobs:jobdispatch_list')
        events_url = reverse('plugins:netbox_safejobs:retryevent_list')
        settings = get_settings()
        return {
            'list_url': list_url,
            'state_label': dict(JobDispatchStateChoices).get(instance.dispatch_state, instance.dispatch_state),
            'state_color': JobDispatchStateChoices.colors.get(instance.dispatch_state, 'secondary'),
            'state_help': {key: help_html(text) for key, text in state_help(instance.dispatch_state, settings).items()},
            'age': tables.format_age(instance.age),
            'job': job,
            'job_url': reverse('core:job', kwargs={'pk': job.pk}) if job else None,
            'rq_task_url': (reverse('core:background_task', kwargs={'job_id': str(instance.job_uuid)})
                            if compat.may_view_background_tasks(request) else None),
            'event_count': events.count() if events is not None else None,
            'events_url': f'{events_url}?job_uuid={instance.job_uuid}',
            'stuck_after': settings.stuck_after,
        }


@register_model_view(JobDispatch, 'resend', path='resend')
class JobDispatchResendView(generic.ObjectView):
    """
    Send a webhook that gave up (``webhooks.resend``) again: POST only, with ``change_jobdispatch`` (and its
    constraints). Anything else about the row is left alone; a row that did not give up is a message, not an error.
    """
    queryset = RestrictedQuerySet(model=JobDispatch).defer('payload')

    def get_required_permission(self):
        return 'netbox_safejobs.change_jobdispatch'

    def get(self, request, pk):
        return redirect(get_object_or_404(self.queryset.restrict(request.user, 'view'), pk=pk).get_absolute_url())

    def post(self, request, pk):
        row = get_object_or_404(self.queryset.restrict(request.user, 'change'), pk=pk)
        if webhooks.resend(JobDispatch.objects.filter(pk=row.pk), user=request.user):
            messages.success(request, _('The webhook is sent again; the relay of every worker pushes it within a '
                                        'second.'))
        else:
            messages.info(request, _('Only a webhook that gave up can be sent again: this one is not waiting for an '
                                     'operator.'))
        return redirect(row.get_absolute_url())


#
# Stopping running jobs
#

def _next_run_wanted(request):
    """The operator's choice for a periodic job: schedule its next run unless the box was cleared."""
    return request.POST.get('next_run', 'true').lower() in ('true', 'on', '1', 'yes')


def _report(request, results):
    """One message per outcome, as NetBox reports a bulk operation."""
    for result in results:
        level = messages.success if result.outcome == stopping.StopOutcome.STOPPING else messages.info
        level(request, result.message)


class JobStopView(SafeReturnURLMixin, GetReturnURLMixin, ObjectPermissionRequiredMixin, View):
    """
    Stop a running job (``stopping.request_stop``): a confirmation page on GET, the stop on POST. The Stop button of
    NetBox's Job page and of a job in flight lead here. A job that is not running gets a message, not an error.
    Returns to a safe ``return_url``, else to the job.
    """
    queryset = Job.objects.all()
    template_name = 'netbox_safejobs/job_stop.html'

    def get_required_permission(self):
        return STOP_PERMISSION

    def get(self, request, pk):
        job = get_object_or_404(self.queryset, pk=pk)
        return render(request, self.template_name, {
            'object': job,
            'running': job.status == RUNNING,
            'return_url': self.get_return_url(request, job),
        })

    def post(self, request, pk):
        job = get_object_or_404(self.queryset, pk=pk)
        _report(request, [stopping.request_stop(job, user=request.user, next_run=_next_run_wanted(request))])
        return redirect(self.get_return_url(request, job))


@register_model_view(JobDispatch, 'bulk_stop', path='stop', detail=False)
class JobDispatchBulkStopView(SafeReturnURLMixin, GetReturnURLMixin, ObjectPermissionRequiredMixin, View):
    """
    Stop the jobs of the selected jobs in flight: a confirmation listing them, then the stop of each. Only jobs the
    user may stop (``core.stop_job`` and its constraints) are stopped; rows without a job (webhooks) are skipped.
    """
    queryset = Job.objects.all()
    template_name = 'netbox_safejobs/job_bulk_stop.html'
    default_return_url = 'plugins:netbox_safejobs:jobdispatch_list'

    def get_required_permission(self):
        return STOP_PERMISSION

    def get(self, request):
        return redirect(self.get_return_url(request))

    def post(self, request):
        if '_confirm' in request.POST:
            ids = [pk for pk in request.POST.getlist('job') if str(pk).isdigit()]
            next_run = _next_run_wanted(request)
            _report(request, [stopping.request_stop(job, user=request.user, next_run=next_run)
                              for job in self.queryset.filter(pk__in=ids).order_by('pk')])
            return redirect(self.get_return_url(request))
        rows = RestrictedQuerySet(model=JobDispatch).restrict(request.user, 'view').defer('payload')
        if request.POST.get('_all'):
            rows = filtersets.JobDispatchFilterSet(request.GET, rows, request=request).qs
        else:
            rows = rows.filter(pk__in=[pk for pk in request.POST.getlist('pk') if str(pk).isdigit()])
        jobs = list(self.queryset.filter(pk__in=rows.exclude(job__isnull=True).values('job_id')).order_by('pk'))
        if not jobs:
            messages.warning(request, _('None of the selected jobs in flight is a job you may stop.'))
            return redirect(self.get_return_url(request))
        return render(request, self.template_name, {
            'jobs': jobs,
            'periodic': any(job.interval for job in jobs),
            'return_url': self.get_return_url(request),
        })

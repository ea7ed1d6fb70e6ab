"""
Dashboard widget: retry events of the last hours by kind, each linking to the filtered list, and the jobs in flight
that need an operator's eye (owed pushes, stuck candidates), linking to the jobs in flight page.

Its texts are translated with plain ``gettext`` when the module is imported (from the plugin's ``ready()``), as
NetBox's own widgets do: NetBox's dialogs ``str()`` a widget, whose title falls back to ``default_title``, and store
that title in the dashboard's JSON, where a lazy translation object fails both.
"""

from datetime import timedelta
from urllib.parse import urlencode

from django import forms
from django.db.models import Count
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from extras.dashboard.utils import register_widget
from extras.dashboard.widgets import DashboardWidget, WidgetConfigForm
from utilities.querysets import RestrictedQuerySet

from .choices import JobDispatchStateChoices, RetryEventKindChoices
from .in_flight import state_counts
from .models import JobDispatch, RetryEvent

__all__ = (
    'RetryEventsWidget',
)


@register_widget
class RetryEventsWidget(DashboardWidget):
    default_title = _('Retry events (24 hours)')
    description = _('Retry events of background jobs in the last hours, by kind (netbox-safejobs).')
    template_name = 'netbox_safejobs/widgets/retry_events.html'
    default_config = {'hours': 24}
    width = 4
    height = 4

    class ConfigForm(WidgetConfigForm):
        hours = forms.IntegerField(
            label=_('Hours'),
            min_value=1,
            max_value=24 * 90,
            initial=24,
            help_text=_('Count the events of this many last hours'),
        )

    def render(self, request):
        in_flight = self.in_flight(request)
        if not request.user.has_perm('netbox_safejobs.view_retryevent'):
            return render_to_string(self.template_name, {'permitted': False, 'in_flight': in_flight})
        hours = int(self.config.get('hours') or 24)
        since = timezone.now() - timedelta(hours=hours)
        counts = dict(
            RetryEvent.objects.restrict(request.user, 'view')
            .filter(time__gte=since)
            .order_by()
            .values_list('kind')
            .annotate(count=Count('pk'))
        )
        list_url = reverse('plugins:netbox_safejobs:retryevent_list')
        since_param = since.replace(microsecond=0).isoformat()
        rows = [
            {
                'kind': value,
                'label': label,
                'color': color,
                'count': counts.get(value, 0),
                'url': f'{list_url}?{urlencode({"kind": value, "time__after": since_param})}',
            }
            for value, label, color in RetryEventKindChoices.CHOICES
        ]
        return render_to_string(self.template_name, {
            'permitted': True,
            'rows': rows,
            'total': sum(counts.values()),
            'all_url': f'{list_url}?{urlencode({"time__after": since_param})}',
            'hours': hours,
            'in_flight': in_flight,
        })

    @staticmethod
    def in_flight(request):
        """Owed and stuck-candidate counts of the jobs in flight, for a user who may view them; else None."""
        if not request.user.has_perm('netbox_safejobs.view_jobdispatch'):
            return None
        S = JobDispatchStateChoices
        queryset = RestrictedQuerySet(model=JobDispatch).restrict(request.user, 'view')
        counts = state_counts(queryset, states=(S.STATE_OWED, S.STATE_STUCK))
        list_url = reverse('plugins:netbox_safejobs:jobdispatch_list')
        labels = dict(S)
        return {
            'url': list_url,
            'rows': [
                {'state': state, 'label': labels[state], 'color': S.colors[state], 'count': counts[state],
                 'url': f'{list_url}?{urlencode({"state": state})}'}
                for state in (S.STATE_OWED, S.STATE_STUCK)
            ],
        }

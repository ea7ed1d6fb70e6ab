"""
Dashboard widget: retry events of the last hours by kind (the kinds that had events), each linking to the filtered
list, and the jobs in flight that need an operator's eye (owed pushes, stuck candidates), linking to the jobs in
flight page. Its title says its hours, unless the user gave it a title of their own.

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
from django.utils.translation import ngettext
from extras.dashboard.utils import register_widget
from extras.dashboard.widgets import DashboardWidget, WidgetConfigForm
from utilities.querysets import RestrictedQuerySet

from .choices import JobDispatchStateChoices, RetryEventKindChoices, state_help
from .in_flight import state_counts
from .models import JobDispatch, RetryEvent

__all__ = (
    'RetryEventsWidget',
    'widget_title',
)

DEFAULT_HOURS = 24
# Kinds with events listed in one column up to this many; more in two.
TWO_COLUMNS_ABOVE = 6
SINGULAR = 'Retry events ({hours} hour)'
PLURAL = 'Retry events ({hours} hours)'


def widget_title(hours):
    """The widget's title for ``hours``: ``Retry events (24 hours)``."""
    return ngettext(SINGULAR, PLURAL, hours).format(hours=hours)


def is_default_title(title):
    """
    Whether ``title`` is empty or the widget's own title for some number of hours, as NetBox stores it when a widget
    is added or configured with its title left as it was (in the current language, or in English).
    """
    if not title:
        return True
    templates = {ngettext(SINGULAR, PLURAL, 1), ngettext(SINGULAR, PLURAL, 2), SINGULAR, PLURAL}
    for template in templates:
        prefix, _hours, suffix = template.partition('{hours}')
        middle = title[len(prefix):len(title) - len(suffix)]
        if title.startswith(prefix) and title.endswith(suffix) and middle.isdigit():
            return True
    return False


@register_widget
class RetryEventsWidget(DashboardWidget):
    default_title = widget_title(DEFAULT_HOURS)
    description = _('Retry events of background jobs in the last hours, by kind (netbox-safejobs).')
    template_name = 'netbox_safejobs/widgets/retry_events.html'
    default_config = {'hours': DEFAULT_HOURS}
    width = 4
    height = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # NetBox stores the title shown when the widget was added (the default one when the field was left empty)
        # and keeps it when the hours change: the widget's own title follows its hours, one the user wrote stays.
        if is_default_title(self.title):
            self.title = widget_title(self.hours)

    @property
    def hours(self):
        try:
            return int(self.config.get('hours') or DEFAULT_HOURS)
        except (TypeError, ValueError):
            return DEFAULT_HOURS

    class ConfigForm(WidgetConfigForm):
        hours = forms.IntegerField(
            label=_('Hours'),
            min_value=1,
            max_value=24 * 90,
            initial=DEFAULT_HOURS,
            help_text=_('Count the events of this many last hours (the title follows, unless you gave it your own)'),
        )

    def render(self, request):
        in_flight = self.in_flight(request)
        if not request.user.has_perm('netbox_safejobs.view_retryevent'):
            return render_to_string(self.template_name, {'permitted': False, 'in_flight': in_flight})
        hours = self.hours
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
            # Only the kinds that had events: the rows fit the widget's default height, without scrolling.
            for value, label, color in RetryEventKindChoices.CHOICES if counts.get(value)
        ]
        return render_to_string(self.template_name, {
            'permitted': True,
            'rows': rows,
            # Many kinds at once (an incident) in two columns, so that they still fit the default height.
            'two_columns': len(rows) > TWO_COLUMNS_ABOVE,
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
                 'url': f'{list_url}?{urlencode({"state": state})}',
                 'help': state_help(state, plain=True)['meaning']}
                for state in (S.STATE_OWED, S.STATE_STUCK)
            ],
        }

"""
The filter forms of the retry event list and of the jobs in flight (both are written by the plugin only: no add or
edit forms), and the job UUID field their filter sets share.
"""

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _
from netbox.forms.mixins import SavedFiltersMixin
from utilities.forms import BOOLEAN_WITH_BLANK_CHOICES, FilterForm
from utilities.forms.rendering import FieldSet
from utilities.forms.widgets import DateTimePicker

from .choices import JobDispatchStateChoices, RetryEventKindChoices
from .models import JobDispatch, RetryEvent

__all__ = (
    'JobDispatchFilterForm',
    'JobUUIDField',
    'RetryEventFilterForm',
)


class JobUUIDField(forms.UUIDField):
    """
    A whole job UUID. What is not one (a part of a UUID pasted, a typo) is refused with a message that says where a
    part of a UUID is looked for: the quick search.
    """

    def to_python(self, value):
        try:
            return super().to_python(value)
        except ValidationError:
            raise ValidationError(
                _('"%(value)s" is not a whole job UUID (32 hexadecimal digits, such as '
                  '3a067877-9f4c-4f0e-8d52-1c2f4e5a6b7c). To find a job by the start of its UUID, use the quick '
                  'search.'),
                code='invalid', params={'value': value},
            ) from None


def date_time_field(label):
    """One end of a time range, with NetBox's date and time picker."""
    return forms.DateTimeField(label=label, required=False, widget=DateTimePicker())


class JobFilterFields(forms.Form):
    """The filters both lists have, of the job and of the worker that ran it; each form adds its own."""

    job_uuid = JobUUIDField(
        label=_('Job UUID'),
        required=False,
    )
    runner = forms.CharField(
        label=_('Runner'),
        required=False,
    )
    queue = forms.CharField(
        label=_('Queue'),
        required=False,
    )
    worker_pid = forms.IntegerField(
        label=_('Worker PID'),
        required=False,
        min_value=0,
    )


class RetryEventFilterForm(SavedFiltersMixin, FilterForm, JobFilterFields):
    model = RetryEvent
    fieldsets = (
        FieldSet('q', 'filter_id'),
        FieldSet('kind', 'time__after', 'time__before', name=_('Event')),
        FieldSet('job_uuid', 'job_name', 'job_exists', 'runner', 'queue', name=_('Job')),
        FieldSet('worker', 'worker_pid', name=_('Worker')),
    )
    kind = forms.MultipleChoiceField(
        label=_('Kind'),
        choices=RetryEventKindChoices,
        required=False,
    )
    time__after = date_time_field(_('From'))
    time__before = date_time_field(_('Until'))
    job_name = forms.CharField(
        label=_('Job name'),
        required=False,
    )
    job_exists = forms.NullBooleanField(
        label=_('Job still exists'),
        required=False,
        widget=forms.Select(choices=BOOLEAN_WITH_BLANK_CHOICES),
    )
    worker = forms.CharField(
        label=_('Worker host'),
        required=False,
    )


class JobDispatchFilterForm(SavedFiltersMixin, FilterForm, JobFilterFields):
    model = JobDispatch
    fieldsets = (
        FieldSet('q', 'filter_id'),
        FieldSet('state', 'recovered', 'created__after', 'created__before', name=_('State')),
        FieldSet('job_uuid', 'runner', 'queue', name=_('Job')),
        FieldSet('worker_host', 'worker_pid', name=_('Worker')),
    )
    state = forms.MultipleChoiceField(
        label=_('State'),
        choices=JobDispatchStateChoices,
        required=False,
    )
    recovered = forms.NullBooleanField(
        label=_('Recovered'),
        required=False,
        widget=forms.Select(choices=BOOLEAN_WITH_BLANK_CHOICES),
    )
    created__after = date_time_field(_('Created from'))
    created__before = date_time_field(_('Created until'))
    worker_host = forms.CharField(
        label=_('Worker host'),
        required=False,
    )

"""The filter set of retry events, shared by the list page, the bulk delete view and the REST API."""

import uuid

import django_filters
from core.models import Job
from django import forms
from django.db.models import Q
from django.utils.translation import gettext as _
from netbox.filtersets import BaseFilterSet
from utilities.filters import MultiValueCharFilter, MultiValueDecimalFilter, multivalue_field_factory

from . import compat
from .choices import JobDispatchStateChoices, RetryEventKindChoices
from .in_flight import state_q
from .models import JobDispatch, RetryEvent
from .settings import get_settings

__all__ = (
    'JobDispatchFilterSet',
    'RetryEventFilterSet',
)


# Filters whose values are checked whole (a kind, a UUID): no partial-match lookup variants.
WHOLE_VALUE_FILTERS = ('kind', 'job_uuid')


class MultiValueUUIDFilter(django_filters.MultipleChoiceFilter):
    """One or more UUIDs (ORed); a value that is not a UUID is a validation error (400 in the API)."""
    field_class = multivalue_field_factory(forms.UUIDField)


@compat.register_filterset
class RetryEventFilterSet(BaseFilterSet):
    """
    RetryEvent is a plain model (no tags, custom fields or change logging), so this is a ``BaseFilterSet`` like core's
    ``JobFilterSet``. ``Meta.fields`` get NetBox's lookup variants (``__n``, ``__ic``, ``__gte``...).
    """
    q = django_filters.CharFilter(
        method='search',
        label=_('Search'),
    )
    kind = django_filters.MultipleChoiceFilter(
        choices=RetryEventKindChoices,
        distinct=False,
        label=_('Kind'),
    )
    job_id = django_filters.ModelMultipleChoiceFilter(
        queryset=Job.objects.all(),
        distinct=False,
        label=_('Job (ID)'),
    )
    job_uuid = MultiValueUUIDFilter(
        distinct=False,
        label=_('Job UUID'),
    )
    job_exists = django_filters.BooleanFilter(
        field_name='job',
        lookup_expr='isnull',
        exclude=True,
        label=_('Job row exists'),
    )
    worker = MultiValueCharFilter(
        field_name='worker_host',
        distinct=False,
        label=_('Worker host'),
    )
    # Seconds with a fraction (NetBox would map a FloatField to whole numbers).
    delay = MultiValueDecimalFilter(
        label=_('Delay (seconds)'),
    )
    time__after = django_filters.DateTimeFilter(
        field_name='time',
        lookup_expr='gte',
        label=_('Time (from)'),
    )
    time__before = django_filters.DateTimeFilter(
        field_name='time',
        lookup_expr='lte',
        label=_('Time (until)'),
    )

    class Meta:
        model = RetryEvent
        fields = (
            'id', 'time', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'worker_host', 'worker_pid',
        )

    @classmethod
    def get_additional_lookups(cls, existing_filter_name, existing_filter):
        """
        NetBox adds the lookups of a text field to ``kind`` and ``job_uuid`` (``__ic``, ``__isw``, ``__regex``...),
        but their values are validated as a kind and as a whole UUID, so a partial value could only be refused (400).
        They keep the negation (``kind__n``, ``job_uuid__n``); partial text is what ``q`` and the other fields are for.
        """
        lookups = super().get_additional_lookups(existing_filter_name, existing_filter)
        if existing_filter_name in WHOLE_VALUE_FILTERS:
            return {name: lookup for name, lookup in lookups.items() if name == f'{existing_filter_name}__n'}
        return lookups

    def search(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        try:
            # A job UUID is what an operator pastes most often: answer it from the job_uuid index.
            return queryset.filter(job_uuid=uuid.UUID(value))
        except ValueError:
            pass
        return queryset.filter(
            Q(job_name__icontains=value) |
            Q(runner__icontains=value) |
            Q(queue__iexact=value) |
            Q(worker_host__icontains=value) |
            Q(detail__icontains=value)
        )


@compat.register_filterset
class JobDispatchFilterSet(BaseFilterSet):
    """
    Jobs in flight (``JobDispatch``, a plain model like core's Job: a ``BaseFilterSet``). ``state`` is decided by the
    database's clock (``in_flight.state_q``); the stored push is not a field of any filter.
    """
    q = django_filters.CharFilter(
        method='search',
        label=_('Search'),
    )
    state = django_filters.MultipleChoiceFilter(
        choices=JobDispatchStateChoices,
        method='filter_state',
        label=_('State'),
    )
    job_id = django_filters.ModelMultipleChoiceFilter(
        queryset=Job.objects.all(),
        distinct=False,
        label=_('Job (ID)'),
    )
    job_uuid = MultiValueUUIDFilter(
        distinct=False,
        label=_('Job UUID'),
    )
    queue = MultiValueCharFilter(
        field_name='queue_name',
        distinct=False,
        label=_('Queue'),
    )
    worker = MultiValueUUIDFilter(
        distinct=False,
        label=_('Worker (ID)'),
    )
    recovered = django_filters.BooleanFilter(
        method='filter_recovered',
        label=_('Recovered'),
    )
    created__after = django_filters.DateTimeFilter(
        field_name='created',
        lookup_expr='gte',
        label=_('Created (from)'),
    )
    created__before = django_filters.DateTimeFilter(
        field_name='created',
        lookup_expr='lte',
        label=_('Created (until)'),
    )

    class Meta:
        model = JobDispatch
        fields = (
            'id', 'runner', 'queue_name', 'method', 'created', 'sent', 'owed', 'claimed', 'recoveries', 'worker_host',
            'worker_pid',
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No filter here follows a to-many relation, so none needs DISTINCT: on the annotated queryset it would sort
        # every matching row by every column before the first page.
        for filter_ in self.filters.values():
            filter_.distinct = False

    @classmethod
    def get_additional_lookups(cls, existing_filter_name, existing_filter):
        """As for retry events: UUIDs are whole values, only negated (``job_uuid__n``, ``worker__n``)."""
        lookups = super().get_additional_lookups(existing_filter_name, existing_filter)
        if existing_filter_name in ('job_uuid', 'worker'):
            return {name: lookup for name, lookup in lookups.items() if name == f'{existing_filter_name}__n'}
        return lookups

    def filter_state(self, queryset, name, value):
        if not value:
            return queryset
        settings = get_settings()
        condition = Q()
        for state in value:
            condition |= state_q(state, settings)
        return queryset.filter(condition)

    def filter_recovered(self, queryset, name, value):
        if value is None:
            return queryset
        return queryset.filter(recoveries__gt=0) if value else queryset.filter(recoveries=0)

    def search(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        try:
            # A pasted job UUID: the job's row, from the one-to-one index.
            return queryset.filter(job_uuid=uuid.UUID(value))
        except ValueError:
            pass
        return queryset.filter(
            Q(job__name__icontains=value) |
            Q(runner__icontains=value) |
            Q(queue_name__iexact=value) |
            Q(worker_host__icontains=value)
        )

"""
The filter sets of retry events and of jobs in flight, each shared by its list page, its bulk actions and the REST API.
"""

import string
import uuid

import django_filters
from core.models import Job
from django import forms
from django.db.models import Q
from django.utils.translation import gettext as _
from netbox.filtersets import BaseFilterSet
from utilities.filters import MultiValueCharFilter, MultiValueDecimalFilter, multivalue_field_factory

from . import compat
from .bounded_count import count_at_least
from .choices import JobDispatchStateChoices, RetryEventKindChoices
from .forms import JobUUIDField
from .in_flight import state_q
from .models import JobDispatch, RetryEvent
from .settings import get_settings
from .tables import SHORT_UUID_LENGTH
from .word_search import search_terms, word_matches

__all__ = (
    'JobDispatchFilterSet',
    'RetryEventFilterSet',
    'uuid_prefix_range',
)


# Filters whose values are checked whole (a kind, a UUID): no partial-match lookup variants.
WHOLE_VALUE_FILTERS = ('kind', 'job_uuid')
# The fewest hexadecimal digits of a job UUID's start that the quick search looks up as one: the 8 the tables show.
UUID_PREFIX_DIGITS = SHORT_UUID_LENGTH
UUID_LAYOUT = '00000000-0000-0000-0000-000000000000'


def time_range(field_name, from_label, until_label):
    """The two ends of a range of ``field_name``'s times (``<name>__after``, ``<name>__before``), both included."""
    return (django_filters.DateTimeFilter(field_name=field_name, lookup_expr='gte', label=from_label),
            django_filters.DateTimeFilter(field_name=field_name, lookup_expr='lte', label=until_label))


class MultiValueUUIDFilter(django_filters.MultipleChoiceFilter):
    """One or more UUIDs (ORed); a value that is not a UUID is a validation error (400 in the API)."""
    field_class = multivalue_field_factory(forms.UUIDField)


class MultiValueJobUUIDFilter(MultiValueUUIDFilter):
    """One or more job UUIDs; a part of one is refused saying that the quick search finds a job by it."""
    field_class = multivalue_field_factory(JobUUIDField)


class RefuseInvalidMixin:
    """
    A filter value that does not parse (a part of a UUID, an unknown kind, a date that is not one) selects no row.
    django-filter leaves such a filter out, so the page listed every row as if it matched, and a bulk action on
    "all matching" would have reached them all; the REST API answers 400 before it gets here. The list pages say
    which value was refused (``views.FilterErrorsMixin``).
    """

    def filter_queryset(self, queryset):
        if self.errors:
            return queryset.none()
        return super().filter_queryset(queryset)


def uuid_prefix_range(value):
    """
    ``(lowest, highest)`` UUID that begins with ``value`` when it is the start of a UUID (``UUID_PREFIX_DIGITS`` to
    31 hexadecimal digits, any case, with the dashes of a UUID where a UUID has them, or none), else None. PostgreSQL
    orders UUIDs by their bytes, as their text, so the UUIDs that begin with it are one range of a UUID index: the
    job_uuid index reads the matching entries only (a ``LIKE`` on the UUID's text would read every row).
    """
    text = value.strip().lower()
    if '-' in text:
        if len(text) > len(UUID_LAYOUT) or any((char == '-') != (UUID_LAYOUT[i] == '-') for i, char in enumerate(text)):
            return None
        text = text.replace('-', '')
    if not UUID_PREFIX_DIGITS <= len(text) < 32 or not set(text) <= set(string.hexdigits):
        return None
    return uuid.UUID(text.ljust(32, '0')), uuid.UUID(text.ljust(32, 'f'))


@compat.register_filterset
class RetryEventFilterSet(RefuseInvalidMixin, BaseFilterSet):
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
    job_uuid = MultiValueJobUUIDFilter(
        distinct=False,
        label=_('Job UUID'),
    )
    job_exists = django_filters.BooleanFilter(
        field_name='job',
        lookup_expr='isnull',
        exclude=True,
        label=_('Job still exists'),
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
    time__after, time__before = time_range('time', _('Time (from)'), _('Time (until)'))

    class Meta:
        model = RetryEvent
        fields = (
            'id', 'time', 'job_name', 'runner', 'queue', 'attempt', 'delay', 'worker_host', 'worker_pid',
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No filter of an event follows a to-many relation, so none needs DISTINCT (django-filter's default for the
        # lookups NetBox generates): it would sort every matching row by every column before the first page.
        for filter_ in self.filters.values():
            filter_.distinct = False

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
        """
        The quick search (docs/ui.md): a pasted job UUID matches that job's events (the job_uuid index). Any other
        text matches the events whose job name, runner, worker host or detail has words beginning with each of its
        words (``nightly``, ``SyncDataSource``, ``worker-2``, ``timeout expired``; any order, ignoring case), whose
        queue is the text, whose kind's name or label contains it, or, when it is the start of a UUID, whose job's
        UUID begins with it (``uuid_prefix_range``). Each of these is answered from an index (the time index and the
        stored words, or their full-text index; the queue, kind and job_uuid indexes), never by reading every event.
        """
        value = value.strip()
        if not value:
            return queryset
        try:
            # A job UUID is what an operator pastes most often: answer it from the job_uuid index.
            return queryset.filter(job_uuid=uuid.UUID(value))
        except ValueError:
            pass
        # Exact and case-sensitive, as RQ names queues: the queue index serves it (UPPER(queue) would not).
        condition = Q(queue=value)
        known = 0
        if terms := search_terms(value):
            matches, known = word_matches(queryset, terms)
            condition |= matches
        if kinds := search_kinds(value):
            condition |= Q(kind__in=kinds)
        if bounds := uuid_prefix_range(value):
            condition |= Q(job_uuid__range=bounds)
        queryset = queryset.filter(condition)
        if known and not self.other_filters(name):
            # The words alone are known to match this many events (the queue and kind parts only add to them): the
            # page's count need not count them again, newest first, to show "1000+".
            count_at_least(queryset, known)
        return queryset

    def other_filters(self, name):
        """Whether a filter other than ``name`` has a value in this request."""
        # An empty value is None, '', [] or an empty queryset (job_id), which is empty without a query; False is a
        # value (job_exists=false).
        return any(value is False or bool(value) for key, value in self.form.cleaned_data.items() if key != name)


def search_kinds(value):
    """The kinds whose value (``gave_up``) or label (``Gave up``) contains ``value``, ignoring case."""
    value = value.casefold()
    return [
        kind for kind, label in dict(RetryEventKindChoices).items()
        if value in kind.casefold() or value in str(label).casefold()
    ]


@compat.register_filterset
class JobDispatchFilterSet(RefuseInvalidMixin, BaseFilterSet):
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
    job_uuid = MultiValueJobUUIDFilter(
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
    created__after, created__before = time_range('created', _('Created (from)'), _('Created (until)'))

    class Meta:
        model = JobDispatch
        fields = (
            'id', 'name', 'runner', 'queue_name', 'method', 'created', 'sent', 'owed', 'claimed', 'gave_up',
            'recoveries', 'failures', 'worker_host', 'worker_pid', 'stop_requested', 'stopped_by', 'stop_next_run',
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
            # A pasted job UUID: the job's row, from the job_uuid index.
            return queryset.filter(job_uuid=uuid.UUID(value))
        except ValueError:
            pass
        if bounds := uuid_prefix_range(value):
            # The start of a job's UUID, as the tables show it: a range of the job_uuid index. Not also looked for in
            # the texts, as other text is: that reads every row and every Job (docs/performance.md#jobs-in-flight),
            # for a name or host that would have to begin with 8 hexadecimal digits.
            return queryset.filter(job_uuid__range=bounds)
        return queryset.filter(
            Q(job__name__icontains=value) |
            Q(name__icontains=value) |
            Q(runner__icontains=value) |
            Q(queue_name__iexact=value) |
            Q(worker_host__icontains=value)
        )

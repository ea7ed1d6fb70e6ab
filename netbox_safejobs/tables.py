"""
Tables of retry events (the list page, and the compact table of the Job page panel), of jobs in flight, and the
"Retry events" column the plugin adds to NetBox's own Jobs table.
"""

from functools import lru_cache
from typing import NamedTuple

import django_tables2 as tables
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.timezone import localtime
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _
from netbox.tables import BaseTable, NetBoxTable, columns

from .bounded_count import BoundedCountMixin
from .choices import JobDispatchStateChoices, kind_help, state_help
from .models import JobDispatch, RetryEvent
from .permissions import viewable_job_ids
from .settings import get_settings

__all__ = (
    'SHORT_UUID_LENGTH',
    'JobDispatchTable',
    'JobRetryEventTable',
    'JobRetryEventsColumn',
    'RetryEventTable',
    'format_age',
    'register_job_table_column',
)

DETAIL_LENGTH = 120
SHORT_UUID_LENGTH = 8
# The widest a text is shown in a table before it is cut (``one_line``): a detail text (about 60 characters), a job's
# name (about 30), a worker's host name. What keeps an event to one line, at 1,400 px as on a phone.
DETAIL_WIDTH_REM = 30
JOB_WIDTH_REM = 11
HOST_WIDTH_REM = 9
RUNNER_WIDTH_REM = 7


class JobColumn(tables.Column):
    """
    The job: linked to NetBox's Job page while its row exists and the user may view it, else its name (or UUID) as
    recorded in the event. Reads only ``job_id``, ``job_name`` and ``job_uuid`` of the event: no join; which of the
    shown jobs the user may view is asked once per table (``RetryEventTable.viewable_job_ids``).
    """

    empty_values = ()

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('accessor', tables.A('job_name'))
        kwargs.setdefault('order_by', ('job_name', 'job_uuid'))
        super().__init__(*args, **kwargs)

    def render(self, record, value, table):
        label = one_line(record.job_name or short_uuid(record.job_uuid), JOB_WIDTH_REM)
        if not record.job_id:
            return format_html(
                '{} <i class="mdi mdi-link-variant-off text-muted" title="{}" aria-hidden="true"></i>'
                '<span class="visually-hidden">({})</span>',
                label, _('No job row: the Job was deleted, rolled back, or never saved'), _('no job row'),
            )
        if record.job_id in table.viewable_job_ids():
            return format_html('<a href="{}">{}</a>', reverse('core:job', kwargs={'pk': record.job_id}), label)
        return label

    def value(self, record, value):
        return record.job_name or str(record.job_uuid)


class KindColumn(columns.ChoiceFieldColumn):
    """The kind's badge, with what it means and what to do as its tooltip (``choices.KIND_HELP``)."""

    def render(self, record, bound_column, value):
        badge = super().render(record, bound_column, value)
        tooltip = kind_tooltip(record.kind, get_language())
        if not tooltip:
            return badge
        return format_html('<span title="{}" data-bs-toggle="tooltip">{}</span>', tooltip, badge)


@lru_cache(maxsize=128)
def kind_tooltip(kind, language):
    """The tooltip of a kind's badge in ``language``: made once per kind and language, not once per row."""
    help_text = kind_help(kind, plain=True)
    if not help_text['meaning']:
        return ''
    return f'{help_text["meaning"]}\n{_("What to do")}: {help_text["action"]}'


def short_uuid(value):
    """The first ``SHORT_UUID_LENGTH`` characters of a UUID: enough to tell apart the jobs of a page."""
    return str(value)[:SHORT_UUID_LENGTH]


class ShortUUIDColumn(tables.Column):
    """
    A job's UUID shown short (``short_uuid``), the whole UUID as its tooltip and in every export. The quick search
    finds a job by this start of its UUID (``filtersets.uuid_prefix_range``). With ``events_link``, linked to the
    events of that job.
    """

    def __init__(self, *args, events_link=False, **kwargs):
        self.events_link = events_link
        super().__init__(*args, **kwargs)

    def render(self, value):
        full = str(value)
        if self.events_link:
            url = f"{reverse('plugins:netbox_safejobs:retryevent_list')}?job_uuid={full}"
            return format_html('<a href="{}" title="{}">{}</a>', url, full, short_uuid(full))
        return format_html('<span title="{}">{}</span>', full, short_uuid(full))

    def value(self, value):
        return str(value)


def nowrap():
    """The ``attrs`` of a column whose cells stay on one line: dates, badges, numbers, short names."""
    return {'td': {'class': 'text-nowrap'}}


def one_line(text, width_rem, title=None):
    """``text`` on one line, cut with an ellipsis at ``width_rem``; ``title`` (the whole text) as its tooltip."""
    return format_html(
        '<span class="d-inline-block text-truncate align-bottom" style="max-width: {}rem" title="{}">{}</span>',
        width_rem, text if title is None else title, text,
    )


class OneLineColumn(tables.Column):
    """A text on one line, cut at ``width_rem`` with the whole text as its tooltip; whole in exports."""

    def __init__(self, *args, width_rem=12, **kwargs):
        self.width_rem = width_rem
        super().__init__(*args, **kwargs)

    def render(self, value):
        return one_line(value, self.width_rem)

    def value(self, value):
        return value


class RunnerColumn(OneLineColumn):
    """The runner by its class (or function) name, ``SyncDataSourceJob``; its dotted path as tooltip and in exports."""

    def render(self, value):
        return one_line(value.rpartition('.')[2], self.width_rem, title=value)


class DetailColumn(tables.Column):
    """The detail text on one line, cut to the cell's width; the whole text as its tooltip and in exports."""

    def render(self, value):
        # Cut in characters too: a detail can be long, and the browser need not lay out what it hides.
        return one_line(Truncator(value).chars(DETAIL_LENGTH), DETAIL_WIDTH_REM, title=value)

    def value(self, value):
        return value


class ViewableJobsMixin:
    """
    A table that links jobs only for a user who may view them: it learns its user from ``configure(request)`` (or
    the ``user`` argument NetBox < 4.7 gives tables) and asks once which of its rows' jobs that user may view. With
    no user, no job is linked.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._job_viewer = kwargs.get('user')
        self._viewable_job_ids = None

    def configure(self, request):
        self._job_viewer = request.user
        self._viewable_job_ids = None
        return super().configure(request)

    def viewable_job_ids(self):
        """IDs of the jobs of the rows shown (this page, when paginated) that the table's user may view."""
        if self._viewable_job_ids is None:
            rows = self.page.object_list if getattr(self, 'page', None) is not None else self.data
            job_ids = {getattr(row, 'record', row).job_id for row in rows}
            self._viewable_job_ids = viewable_job_ids(self._job_viewer, job_ids)
        return self._viewable_job_ids


class RetryEventTable(BoundedCountMixin, ViewableJobsMixin, NetBoxTable):
    """
    Sorting by a column sorts by it, then newest first (by ``id`` for the time): the order of the column's index
    (``RetryEvent.Meta.indexes``), read forwards or backwards, so a sorted page is read from the index whatever
    the table's size, and rows with the same value keep their order from page to page.
    """
    count_in_page_order = True

    id = tables.Column(
        verbose_name=_('ID'),
        linkify=True,
    )
    time = columns.DateTimeColumn(
        verbose_name=_('Time'),
        timespec='seconds',
        linkify=True,
        order_by=('time', 'id'),
        attrs=nowrap(),
    )
    kind = KindColumn(
        verbose_name=_('Kind'),
        order_by=('kind', '-time'),
        attrs=nowrap(),
    )
    job = JobColumn(
        verbose_name=_('Job'),
        attrs=nowrap(),
    )
    job_uuid = ShortUUIDColumn(
        verbose_name=_('Job UUID'),
        order_by=('job_uuid', '-time'),
        events_link=True,
        attrs=nowrap(),
    )
    runner = RunnerColumn(
        verbose_name=_('Runner'),
        order_by=('runner', '-time'),
        width_rem=RUNNER_WIDTH_REM,
    )
    queue = tables.Column(
        verbose_name=_('Queue'),
        order_by=('queue', '-time'),
        attrs=nowrap(),
    )
    attempt = tables.Column(
        verbose_name=_('Attempt'),
        order_by=('attempt', '-time'),
        attrs=nowrap(),
    )
    delay = tables.Column(
        verbose_name=_('Delay (s)'),
        order_by=('delay', '-time'),
        attrs=nowrap(),
    )
    worker_host = OneLineColumn(
        verbose_name=_('Worker'),
        order_by=('worker_host', '-time'),
        width_rem=HOST_WIDTH_REM,
    )
    worker_pid = tables.Column(
        verbose_name=_('Worker PID'),
        order_by=('worker_pid', '-time'),
        attrs=nowrap(),
    )
    detail = DetailColumn(
        verbose_name=_('Detail'),
        orderable=False,
    )
    actions = columns.ActionsColumn(
        actions=('delete',),
    )

    class Meta(NetBoxTable.Meta):
        model = RetryEvent
        fields = (
            'pk', 'id', 'time', 'kind', 'job', 'job_uuid', 'runner', 'queue', 'attempt', 'delay', 'worker_host',
            'worker_pid', 'detail', 'actions',
        )
        # The job's UUID is what tells apart jobs of the same name (every run of a script, of a sync): shown short.
        # The runner and the detail text are on the event's page, and a column away (Configure Table): by default
        # each row is one line, so that a screen shows 15 events or more.
        default_columns = (
            'pk', 'time', 'kind', 'job', 'job_uuid', 'queue', 'attempt', 'delay', 'worker_host', 'actions',
        )

    def render_delay(self, value):
        return f'{value:.3f}'

    def value_delay(self, value):
        return value


class JobRetryEventTable(BaseTable):
    """The events of one job, on NetBox's Job page: no selection, no actions, no job column."""
    time = columns.DateTimeColumn(
        verbose_name=_('Time'),
        timespec='milliseconds',
        linkify=True,
        orderable=False,
    )
    kind = columns.ChoiceFieldColumn(
        verbose_name=_('Kind'),
        orderable=False,
    )
    attempt = tables.Column(
        verbose_name=_('Attempt'),
        orderable=False,
    )
    delay = tables.Column(
        verbose_name=_('Delay (s)'),
        orderable=False,
    )
    worker_host = tables.Column(
        verbose_name=_('Worker'),
        orderable=False,
    )
    detail = DetailColumn(
        verbose_name=_('Detail'),
        orderable=False,
    )

    class Meta(BaseTable.Meta):
        model = RetryEvent
        fields = ('time', 'kind', 'attempt', 'delay', 'worker_host', 'detail')
        default_columns = fields
        empty_text = _('No retry events')

    def render_delay(self, value):
        return f'{value:.3f}'


def format_age(value):
    """A duration as an operator reads it: ``42s``, ``3m 05s``, ``2h 07m``, ``3d 04h``."""
    if value is None:
        return None
    seconds = max(0, int(value.total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f'{days}d {hours:02d}h'
    if hours:
        return f'{hours}h {minutes:02d}m'
    if minutes:
        return f'{minutes}m {seconds:02d}s'
    return f'{seconds}s'


class StateColumn(tables.Column):
    """
    The state of a job in flight (``dispatch_state``, annotated by ``in_flight.dispatch_queryset``) as a badge, with
    what it means and what to do as its tooltip (``choices.STATE_HELP``); a scheduled job's says when it is due.
    """

    def render(self, record, value):
        tooltip = state_tooltip(value, get_language())
        if value == JobDispatchStateChoices.STATE_SCHEDULED and getattr(record, 'job_scheduled', None):
            tooltip = f'{_("Due")}: {local_time_text(record.job_scheduled)}\n{tooltip}'
        return format_html('<span class="badge text-bg-{}" title="{}" data-bs-toggle="tooltip">{}</span>',
                           JobDispatchStateChoices.colors.get(value, 'secondary'), tooltip, state_label(value))

    def value(self, value):
        return value


def state_label(state):
    """The label of a state of a job in flight (translated)."""
    return dict(JobDispatchStateChoices).get(state, state)


@lru_cache(maxsize=64)
def _state_tooltip(state, language, stuck_after, unknown_push_age):
    help_text = state_help(state, StateThresholds(stuck_after, unknown_push_age), plain=True)
    if not help_text['meaning']:
        return ''
    return f'{help_text["meaning"]}\n{_("What to do")}: {help_text["action"]}'


class StateThresholds(NamedTuple):
    stuck_after: int
    unknown_push_age: int


def state_tooltip(state, language):
    """The tooltip of a state's badge in ``language``, with the current thresholds: made once per state, not per row."""
    settings = get_settings()
    return _state_tooltip(state, language, settings.stuck_after, settings.unknown_push_age)


class AgeColumn(tables.Column):
    """
    Time since the job's push was written (database clock); sorting by it sorts by ``created``, oldest first. A
    scheduled job shows instead how long until it is due.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('order_by', ('-created', '-pk'))
        super().__init__(*args, **kwargs)

    def render(self, record, value):
        if record.dispatch_state == JobDispatchStateChoices.STATE_SCHEDULED and record.job_scheduled:
            # ``created`` + ``age`` is the database's clock as the page was read.
            due_in = record.job_scheduled - (record.created + value) if value is not None else None
            return format_html('<span title="{}: {}">{}</span>', _('Due'), local_time_text(record.job_scheduled),
                               _('due in {}').format(format_age(due_in)))
        return format_age(value)

    def value(self, value):
        return int(value.total_seconds()) if value is not None else None


def local_time_text(value):
    """A time as NetBox's tables show one: local time, to the second."""
    return localtime(value).strftime('%Y-%m-%d %H:%M:%S')


class JobDispatchTable(BoundedCountMixin, ViewableJobsMixin, NetBoxTable):
    """
    Jobs in flight. Every column reads the row or its annotations (``in_flight.dispatch_queryset``); none reads the
    stored push. The job is linked only for a user who may view it, as on the retry event list. The columns read
    from the worker's heartbeat row are not sortable: sorting by them would look up every row's worker first. The
    total is counted as on the retry event list (``BoundedCountPaginator``).
    """
    id = tables.Column(
        verbose_name=_('ID'),
        linkify=True,
    )
    job = JobColumn(
        verbose_name=_('Job'),
        # Sorted through a join on the Job row: sorting by the per-row job_name subquery would run it for every row.
        order_by=('job__name', 'job_uuid'),
        attrs=nowrap(),
    )
    job_uuid = ShortUUIDColumn(
        verbose_name=_('Job UUID'),
        linkify=True,
        attrs=nowrap(),
    )
    runner = RunnerColumn(
        verbose_name=_('Runner'),
        width_rem=RUNNER_WIDTH_REM,
    )
    queue_name = tables.Column(
        verbose_name=_('Queue'),
        attrs=nowrap(),
    )
    method = tables.Column(
        verbose_name=_('Method'),
        attrs=nowrap(),
    )
    state = StateColumn(
        verbose_name=_('State'),
        accessor=tables.A('dispatch_state'),
        order_by=('dispatch_state',),
        attrs=nowrap(),
    )
    age = AgeColumn(
        verbose_name=_('Age'),
        attrs=nowrap(),
    )
    created = columns.DateTimeColumn(
        verbose_name=_('Written'),
        timespec='seconds',
        attrs=nowrap(),
    )
    sent = columns.DateTimeColumn(
        verbose_name=_('Sent'),
        timespec='seconds',
        attrs=nowrap(),
    )
    owed = columns.DateTimeColumn(
        verbose_name=_('Owed'),
        timespec='seconds',
        attrs=nowrap(),
    )
    claimed = columns.DateTimeColumn(
        verbose_name=_('Claimed'),
        timespec='seconds',
        attrs=nowrap(),
    )
    last_heartbeat = columns.DateTimeColumn(
        verbose_name=_('Last heartbeat'),
        timespec='seconds',
        orderable=False,
        attrs=nowrap(),
    )
    heartbeat = columns.DateTimeColumn(
        verbose_name=_('Lease heartbeat'),
        timespec='seconds',
        attrs=nowrap(),
    )
    worker_seen = columns.DateTimeColumn(
        verbose_name=_('Worker heartbeat'),
        timespec='seconds',
        orderable=False,
        attrs=nowrap(),
    )
    worker_name = OneLineColumn(
        verbose_name=_('Worker name'),
        orderable=False,
        width_rem=HOST_WIDTH_REM,
    )
    worker_host = OneLineColumn(
        verbose_name=_('Worker host'),
        width_rem=HOST_WIDTH_REM,
    )
    worker_pid = tables.Column(
        verbose_name=_('Work horse PID'),
        attrs=nowrap(),
    )
    recoveries = tables.Column(
        verbose_name=_('Resent'),
        attrs=nowrap(),
    )
    actions = columns.ActionsColumn(
        actions=(),
    )

    class Meta(NetBoxTable.Meta):
        model = JobDispatch
        fields = (
            'pk', 'id', 'job', 'job_uuid', 'runner', 'queue_name', 'method', 'state', 'age', 'created', 'sent', 'owed',
            'claimed', 'last_heartbeat', 'heartbeat', 'worker_seen', 'worker_name', 'worker_host', 'worker_pid',
            'recoveries', 'actions',
        )
        default_columns = (
            'job', 'job_uuid', 'runner', 'queue_name', 'state', 'age', 'last_heartbeat', 'worker_host', 'worker_pid',
            'recoveries',
        )
        empty_text = _('No jobs in flight')


class JobRetryEventsColumn(tables.Column):
    """
    NetBox's Jobs table: how many retry events each job has, linked to them. Counted once per page (one ``GROUP BY``
    on the ``job_uuid`` index for the jobs shown), from the events the current user may view; empty for a user who
    may view none. Registered through NetBox's plugin table columns (``register_job_table_column``).
    """

    empty_values = ()

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('verbose_name', _('Retry events'))
        kwargs.setdefault('accessor', tables.A('job_id'))
        kwargs.setdefault('orderable', False)
        super().__init__(*args, **kwargs)

    def counts(self, table):
        """``{job UUID: events}`` of the rows of ``table``'s current page, cached on the table."""
        cached = getattr(table, '_safejobs_event_counts', None)
        if cached is not None:
            return cached
        from netbox.context import current_request

        request = current_request.get()
        user = getattr(request, 'user', None)
        counts = {}
        if user is not None and user.has_perm('netbox_safejobs.view_retryevent'):
            rows = table.page.object_list if getattr(table, 'page', None) is not None else table.data
            uuids = {getattr(row, 'record', row).job_id for row in rows} - {None}
            if uuids:
                counts = dict(
                    RetryEvent.objects.restrict(user, 'view').filter(job_uuid__in=uuids).order_by()
                    .values_list('job_uuid').annotate(count=Count('pk'))
                )
        table._safejobs_event_counts = counts
        return counts

    def render(self, record, table):
        count = self.counts(table).get(record.job_id)
        if not count:
            return '—'
        url = reverse('plugins:netbox_safejobs:retryevent_list')
        return format_html('<a href="{}?job_uuid={}">{}</a>', url, record.job_id, count)

    def value(self, record, table):
        return self.counts(table).get(record.job_id, 0)


def register_job_table_column(column, name):
    """
    Add ``column`` to NetBox's Jobs table (``core.tables.JobTable``) through NetBox's registration of plugin table
    columns, ``utilities.tables.register_table_column`` (every supported NetBox, 4.2 – 4.7; the table shows it under
    *Configure Table*). Returns ``None``, or why it was not added (a column of that name already registered).
    """
    from core.tables import JobTable
    from utilities.tables import register_table_column

    try:
        register_table_column(column, name, JobTable)
    except ValueError as e:
        return str(e)
    return None

"""Tables of retry events: the list page (NetBoxTable) and the compact table of the Job page panel."""

import django_tables2 as tables
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from netbox.tables import BaseTable, NetBoxTable, columns

from .models import RetryEvent
from .permissions import viewable_job_ids

__all__ = (
    'JobRetryEventTable',
    'RetryEventTable',
)

EVENT_VIEW = 'plugins:netbox_safejobs:retryevent'
DETAIL_LENGTH = 120


def event_link():
    """Link a column to the event's page (by view name: the model is plain and has no ``get_absolute_url``)."""
    return (EVENT_VIEW, {'pk': tables.A('pk')})


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
        label = record.job_name or str(record.job_uuid)
        if not record.job_id:
            return format_html('{} <span class="text-muted" title="{}">({})</span>', label,
                               _('The Job row does not exist (any more)'), _('no job row'))
        if record.job_id in table.viewable_job_ids():
            return format_html('<a href="{}">{}</a>', reverse('core:job', kwargs={'pk': record.job_id}), label)
        return label

    def value(self, record, value):
        return record.job_name or str(record.job_uuid)


class DetailColumn(tables.Column):

    def render(self, value):
        short = Truncator(value).chars(DETAIL_LENGTH)
        if short == value:
            return value
        return format_html('<span title="{}">{}</span>', value, short)

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


class RetryEventTable(ViewableJobsMixin, NetBoxTable):
    id = tables.Column(
        verbose_name=_('ID'),
        linkify=event_link(),
    )
    time = columns.DateTimeColumn(
        verbose_name=_('Time'),
        timespec='seconds',
        linkify=event_link(),
    )
    kind = columns.ChoiceFieldColumn(
        verbose_name=_('Kind'),
    )
    job = JobColumn(
        verbose_name=_('Job'),
    )
    job_uuid = tables.Column(
        verbose_name=_('Job UUID'),
    )
    runner = tables.Column(
        verbose_name=_('Runner'),
    )
    queue = tables.Column(
        verbose_name=_('Queue'),
    )
    attempt = tables.Column(
        verbose_name=_('Attempt'),
    )
    delay = tables.Column(
        verbose_name=_('Delay (s)'),
    )
    worker_host = tables.Column(
        verbose_name=_('Worker'),
    )
    worker_pid = tables.Column(
        verbose_name=_('Worker PID'),
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
        # The job's UUID is what tells apart jobs of the same name (every run of a script, of a sync).
        default_columns = (
            'pk', 'time', 'kind', 'job', 'job_uuid', 'runner', 'queue', 'attempt', 'delay', 'worker_host', 'detail',
            'actions',
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
        linkify=event_link(),
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

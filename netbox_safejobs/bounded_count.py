"""
The bounded count of the list pages and of the REST API's lists: the matching rows counted only as far as the next
multiple of ``COUNT_STEP`` past the page asked for, so that a million retry events are not counted whole for each
page (docs/performance.md has the figures).
"""

import math
from functools import cache, partial

from django.db.models import QuerySet
from django.utils.functional import cached_property
from utilities.paginator import EnhancedPaginator

__all__ = (
    'COUNT_STEP',
    'BoundedCountMixin',
    'BoundedCountPaginator',
    'CountAtLeast',
    'bounded_count',
    'count_at_least',
)

# The list pages count the matching rows only this far past the page shown (rounded up to a multiple of it).
COUNT_STEP = 1000


class CountAtLeast(int):
    """A number of rows known to be at least this: NetBox's pages show it as ``1000+``."""

    def __str__(self):
        return f'{int(self)}+'


def count_at_least(queryset, minimum=None):
    """
    The number of rows ``queryset`` is known to have at least (0 when unknown); with ``minimum``, record it first. It
    is kept on the query, which Django copies into every queryset derived from this one: only record it where
    nothing will filter the rows further.
    """
    if minimum is not None:
        queryset.query.safejobs_count_at_least = minimum
    return getattr(queryset.query, 'safejobs_count_at_least', 0)


def bounded_count(queryset, page_end, in_page_order=False):
    """
    The rows of ``queryset`` counted up to the next multiple of ``COUNT_STEP`` past ``page_end`` (``CountAtLeast``
    that multiple when more match), without a query when the queryset is known to have more (``count_at_least``).

    With ``in_page_order``, the rows are counted in the page's order where an index of the table leads it
    (``_ordered_along_an_index``): for a table with an index on every column it is filtered and sorted by, as the
    retry events have. Left unordered, PostgreSQL may count along another index that holds the matches last:
    ``worker_host__ic`` of one host, counted along the worker index, read nearly every event to find 1,001; along
    the time index, as the page is read, a few thousand. The jobs in flight have few indexes, on purpose (each is
    paid by every job's insert, claim and delete), and PostgreSQL cannot estimate their text filters: in the page's
    order it would sort every match only to count a thousand of them. Figures: docs/performance.md, *Counting*.
    """
    bound = math.ceil((page_end + 1) / COUNT_STEP) * COUNT_STEP
    if count_at_least(queryset) > bound:
        return CountAtLeast(bound)
    if not (in_page_order and _ordered_along_an_index(queryset)):
        queryset = queryset.order_by()
    # Only the rows' IDs: the columns computed for showing them (the jobs in flight's state, job name, heartbeats)
    # would be computed for every row counted.
    counted = queryset.values('pk')[:bound + 1].count()
    return CountAtLeast(bound) if counted > bound else counted


@cache
def _index_leading_columns(model):
    """The fields of ``model`` that lead one of its indexes (primary key, unique, ``db_index``, ``Meta.indexes``)."""
    meta = model._meta
    leading = {'pk', meta.pk.name, meta.pk.attname}
    for field in meta.concrete_fields:
        if field.db_index or field.unique:
            leading |= {field.name, field.attname}
    for index in meta.indexes:
        if index.fields:
            leading.add(index.fields[0].lstrip('-'))
    return frozenset(leading)


def _ordered_along_an_index(queryset):
    """
    Whether ``queryset``'s order begins with a column that leads one of its table's indexes: counted in that order,
    its rows are read along the index the page is read from, at most as many as the pages up to the bound would
    read. An order by a computed value, through a join or by a column without an index would sort every matching
    row only to count some of them.
    """
    query = queryset.query
    ordering = query.order_by or (query.get_meta().ordering if query.default_ordering else ())
    if not ordering or not isinstance(ordering[0], str):
        return False
    first = ordering[0].lstrip('-')
    return first not in query.annotations and first in _index_leading_columns(query.model)


class BoundedCountPaginator(EnhancedPaginator):
    """
    NetBox's paginator, but the total is counted only up to the next multiple of ``COUNT_STEP`` past the end of the
    page asked for (``SELECT count(*) FROM (… LIMIT n)``): a list of a million events is not counted whole for each
    page, which cost more than the page itself (a pass over every matching row). Where more rows match, the total
    is a ``CountAtLeast`` (``Showing 1-50 of 1000+``) and the pages offered reach that far; the last of them moves
    the bound on by another step.
    """

    def __init__(self, object_list, per_page, *args, queryset, page_number=1, in_page_order=False, **kwargs):
        super().__init__(object_list, per_page, *args, **kwargs)
        self.queryset = queryset
        self.in_page_order = in_page_order
        try:
            self.page_number = max(1, int(page_number))
        except (TypeError, ValueError):
            self.page_number = 1

    @cached_property
    def count(self):
        return bounded_count(self.queryset, self.page_number * self.per_page, self.in_page_order)


class BoundedCountMixin:
    """A table of a queryset paginated by ``BoundedCountPaginator``; ``count_in_page_order``: see ``bounded_count``."""

    count_in_page_order = False

    def paginate(self, paginator_class=EnhancedPaginator, per_page=None, page=1, *args, **kwargs):
        queryset = getattr(self.data, 'data', None)
        if not isinstance(queryset, QuerySet):
            return super().paginate(paginator_class, per_page, page, *args, **kwargs)
        paginator_class = partial(BoundedCountPaginator, queryset=queryset, page_number=page,
                                  in_page_order=self.count_in_page_order)
        try:
            return super().paginate(paginator_class, per_page, page, *args, **kwargs)
        finally:
            # django-tables2 counts its rows again (``len(table.rows)``, a whole count) when the page shown is empty.
            if (paginator := getattr(self, 'paginator', None)) is not None and 'count' in paginator.__dict__:
                self.data._length = paginator.count

"""
GraphQL filter of retry events: kind, job (UUID, name, ID), runner, queue, worker, time, attempt, delay.

NetBox 4.3+ declares strawberry-django lookups per field; NetBox 4.2 generates them from the django-filter filter
set. ``compat`` tells which, and spells the decorator, base class and lookup types of the running version.
"""

from typing import TYPE_CHECKING

import strawberry
import strawberry_django

from .. import compat
from ..models import RetryEvent

__all__ = (
    'RetryEventFilter',
)

if TYPE_CHECKING or not compat.graphql_legacy_filters():
    _lookups = compat.graphql_lookups()
    StrLookup = _lookups['str']
    DatetimeLookup = _lookups['datetime']
    IntLookup = _lookups['int']
    FloatLookup = _lookups['float']
    UUIDLookup = _lookups['uuid']
    _Base, _base_declares_id = compat.graphql_filter_base()

    @compat.graphql_filter(RetryEvent, lookups=True)
    class RetryEventFilter(_Base):
        if not _base_declares_id:
            id: strawberry.ID | None = strawberry_django.filter_field()
        time: DatetimeLookup | None = strawberry_django.filter_field()
        kind: StrLookup | None = strawberry_django.filter_field()
        job_id: strawberry.ID | None = strawberry_django.filter_field()
        job_uuid: UUIDLookup | None = strawberry_django.filter_field()
        job_name: StrLookup | None = strawberry_django.filter_field()
        runner: StrLookup | None = strawberry_django.filter_field()
        queue: StrLookup | None = strawberry_django.filter_field()
        attempt: IntLookup | None = strawberry_django.filter_field()
        delay: FloatLookup | None = strawberry_django.filter_field()
        detail: StrLookup | None = strawberry_django.filter_field()
        worker_host: StrLookup | None = strawberry_django.filter_field()
        worker_pid: IntLookup | None = strawberry_django.filter_field()
else:
    from netbox.graphql.filter_mixins import BaseFilterMixin, autotype_decorator

    from ..filtersets import RetryEventFilterSet

    class _RetryEventGraphQLFilterSet(RetryEventFilterSet):
        # NetBox 4.2's autotype_decorator maps neither a MultiValueDecimalFilter nor a DateTimeFilter on a lookup,
        # and turns the kind and job UUID filters into plain strings. Those fields get the model fields' own lookups
        # instead (kind: {exact: …}, time: {gte: …}), as the filter of NetBox 4.3+ above declares them.
        delay = None
        time__after = None
        time__before = None
        kind = None
        job_uuid = None

        class Meta(RetryEventFilterSet.Meta):
            fields = (*RetryEventFilterSet.Meta.fields, 'kind', 'job_uuid', 'detail')

    @strawberry_django.filter(RetryEvent, lookups=True)
    @autotype_decorator(_RetryEventGraphQLFilterSet)
    class RetryEventFilter(BaseFilterMixin):
        pass

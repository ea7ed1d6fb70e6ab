"""
GraphQL filters of retry events (kind, job (UUID, name, ID), runner, queue, worker, time, attempt, delay) and of jobs
in flight (state, job, runner, queue, worker, times, recoveries). The stored push is no field of either.

NetBox 4.3+ declares strawberry-django lookups per field; NetBox 4.2 generates them from the django-filter filter
set. ``compat`` tells which, and spells the decorator, base class and lookup types of the running version.
"""

from typing import TYPE_CHECKING

import strawberry
import strawberry_django
from django.db.models import Q

from .. import compat
from ..choices import JobDispatchStateChoices
from ..in_flight import state_q
from ..models import JobDispatch, RetryEvent
from ..settings import get_settings

__all__ = (
    'JobDispatchFilter',
    'RetryEventFilter',
)


def states_q(states):
    """The rows in any of ``states`` (``JobDispatchStateChoices`` values; none: all); an unknown one is an error."""
    known = dict(JobDispatchStateChoices)
    if unknown := [state for state in states if state not in known]:
        raise ValueError(f'Unknown state(s) {", ".join(map(repr, unknown))}: the states are {", ".join(known)}.')
    settings = get_settings()
    condition = Q()
    for state in states:
        condition |= state_q(state, settings)
    return condition

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

    @compat.graphql_filter(JobDispatch, lookups=True)
    class JobDispatchFilter(_Base):
        if not _base_declares_id:
            id: strawberry.ID | None = strawberry_django.filter_field()
        job_id: strawberry.ID | None = strawberry_django.filter_field()
        job_uuid: UUIDLookup | None = strawberry_django.filter_field()
        name: StrLookup | None = strawberry_django.filter_field()
        runner: StrLookup | None = strawberry_django.filter_field()
        queue_name: StrLookup | None = strawberry_django.filter_field()
        method: StrLookup | None = strawberry_django.filter_field()
        created: DatetimeLookup | None = strawberry_django.filter_field()
        sent: DatetimeLookup | None = strawberry_django.filter_field()
        owed: DatetimeLookup | None = strawberry_django.filter_field()
        claimed: DatetimeLookup | None = strawberry_django.filter_field()
        gave_up: DatetimeLookup | None = strawberry_django.filter_field()
        recoveries: IntLookup | None = strawberry_django.filter_field()
        failures: IntLookup | None = strawberry_django.filter_field()
        worker: UUIDLookup | None = strawberry_django.filter_field()
        worker_host: StrLookup | None = strawberry_django.filter_field()
        worker_pid: IntLookup | None = strawberry_django.filter_field()

        @strawberry_django.filter_field
        def state(self, value: list[str], prefix: str) -> Q:
            """Rows in any of these states (by the database's clock, as the list page's filter)."""
            # Jobs in flight are no relation of another type: the prefix is always empty.
            return states_q(value)
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

    from ..filtersets import JobDispatchFilterSet

    class _JobDispatchGraphQLFilterSet(JobDispatchFilterSet):
        # As above: the UUIDs and times get the model fields' own lookups; the state stays the filter set's.
        job_uuid = None
        worker = None
        created__after = None
        created__before = None

        class Meta(JobDispatchFilterSet.Meta):
            fields = (*JobDispatchFilterSet.Meta.fields, 'job_uuid', 'worker')

    @strawberry_django.filter(JobDispatch, lookups=True)
    @autotype_decorator(_JobDispatchGraphQLFilterSet)
    class JobDispatchFilter(BaseFilterMixin):
        pass

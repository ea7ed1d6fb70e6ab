"""
What differs between the NetBox releases the plugin supports (4.2 – 4.7), and between the django-rq, RQ, Django and
strawberry-django releases they install, in one place: each definition names the releases that need it, and detects
the feature, never the version number.

Nothing else in the plugin looks at a version number or tells releases apart: it asks this module. What is the same on
every supported release lives with the module that uses it (the patches check what they need in ``patches``), so
that dropping a release means reading this module alone.
"""

import functools
import inspect
import logging
import sys

__all__ = (
    'bulk_stop_action',
    'capture_globals',
    'event_rule_action_provider',
    'graphql_filter',
    'graphql_filter_base',
    'graphql_legacy_filters',
    'graphql_lookups',
    'graphql_type',
    'is_not_updated',
    'job_closed_values',
    'job_enqueue_parameters',
    'job_field_values',
    'known_rq_queue_name',
    'may_view_background_tasks',
    'next_run_floor',
    'netbox_configuration',
    'next_run_kwargs',
    'process_event_rules',
    'push_queue_kwargs',
    'register_filterset',
    'register_stop_action',
    'rq_queue_name',
    'rq_stop_requested',
    'rq_workers',
    'safe_for_redirect',
    'view_actions',
    'warm_object_types',
    'webhook_push_module',
    'worker_checks',
)

logger = logging.getLogger('netbox_safejobs.compat')


def capture_globals(module):
    """
    The globals of ``module``, the module that defines ``Job.enqueue`` (``patches.jobs_module()``), the dispatch patch
    stands in for: ``django_rq`` on every NetBox, and ``transaction`` where ``Job.enqueue`` defers its push with
    ``transaction.on_commit()`` (4.2.6+, #18880). On 4.2.0 - 4.2.5 it pushes at once and the module has no
    ``transaction`` global.
    """
    return tuple(name for name in ('django_rq', 'transaction') if hasattr(module, name))


def rq_stop_requested():
    """
    The exception RQ's signal handler raises when a worker that is not busy is asked to stop:
    ``rq.worker.StopRequested`` in RQ 2.1 – 2.5 (NetBox 4.2.0 – 4.4.0), ``rq.exceptions.StopRequested`` from RQ 2.6
    (NetBox 4.4.1 and later).
    """
    from rq import exceptions, worker

    return getattr(exceptions, 'StopRequested', None) or worker.StopRequested


def rq_workers(connection):
    """
    The workers RQ lists as live on one Redis (``Worker.all()``, which skips the registrations whose key expired), as
    ``{'name', 'host', 'pid', 'queues', 'birth'}``; ``birth`` is the worker's start by its own host's clock, as an
    aware UTC datetime, or ``None``.

    RQ 2.1 (NetBox 4.2.0 – 4.2.7) parses ``birth`` as a naive datetime in UTC; RQ 2.3 and later (NetBox 4.2.8 and
    later) as an aware one. Detected from the value, not the version.
    """
    from datetime import timezone

    from rq.worker import Worker

    workers = []
    for worker in Worker.all(connection=connection):
        birth = getattr(worker, 'birth_date', None)
        if birth is not None and birth.tzinfo is None:
            birth = birth.replace(tzinfo=timezone.utc)
        queues = worker.queue_names() if callable(getattr(worker, 'queue_names', None)) else []
        workers.append({
            'name': worker.name,
            'host': getattr(worker, 'hostname', '') or '',
            'pid': getattr(worker, 'pid', None),
            'queues': sorted(queues),
            'birth': birth,
        })
    return workers


@functools.cache
def push_queue_kwargs():
    """
    The arguments of ``django_rq.get_queue()`` for a queue that pushes at once, whatever ``RQ['COMMIT_MODE']``:
    ``commit_mode='auto'`` on django-rq 4 (NetBox 4.5.7 and later), ``autocommit=True`` on django-rq 3 (NetBox 4.2.0 –
    4.5.6).
    """
    import django_rq

    params = inspect.signature(django_rq.get_queue).parameters
    if 'commit_mode' in params:
        return {'commit_mode': 'auto'}
    if 'autocommit' in params:
        return {'autocommit': True}
    return {}


def rq_queue_name(job):
    """The RQ queue of a job: ``Job.queue_name`` where NetBox stores it (4.5.2+), else NetBox's model mapping."""
    name = getattr(job, 'queue_name', '')
    if name:
        return name
    from utilities.rqworker import get_queue_for_model

    return get_queue_for_model(job.object_type.model if job.object_type_id else None)


def known_rq_queue_name(job):
    """
    The RQ queue of a job as far as it is known without a query and without raising (for an event: the database may
    be what failed): ``Job.queue_name`` where NetBox stores it (4.5.2+), else NetBox's mapping of the job's object type
    (content types are cached); '' when unknown.
    """
    if _job_has_field('queue_name'):
        return getattr(job, 'queue_name', '') or ''
    try:
        from django.contrib.contenttypes.models import ContentType
        from utilities.rqworker import get_queue_for_model

        model = ContentType.objects.get_for_id(job.object_type_id).model if job.object_type_id else None
        return get_queue_for_model(model)
    except Exception:
        return ''


@functools.cache
def _job_has_field(name):
    # The Job fields added after 4.2 (see job_field_values, next_run_kwargs).
    from core.models import Job

    try:
        Job._meta.get_field(name)
    except Exception:
        return False
    return True


@functools.cache
def job_enqueue_parameters():
    """
    The names of ``Job.enqueue()``'s own parameters (``instance``, ``name``, ``user``, ``schedule_at``, ``interval``,
    ``immediate``; ``queue_name`` from 4.3.1, ``notifications`` from 4.6), read from its signature: whatever else a
    caller passes is the task's arguments (and RQ's options, ``chains.RQ_ENQUEUE_OPTIONS``).
    """
    from core.models import Job

    parameters = inspect.signature(Job.enqueue).parameters.values()
    return frozenset(p.name for p in parameters
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in ('cls', 'func'))


def job_field_values(**values):
    """
    ``values`` without the Job fields this NetBox's ``Job`` model does not have (``log_entries`` is 4.4+,
    ``queue_name`` 4.5.2+, ``notifications`` 4.6+), for building a Job row directly (tests, the demo, the harness).
    """
    return {name: value for name, value in values.items() if _job_has_field(name)}


def job_closed_values(completed):
    """
    The columns ``Job.terminate()`` sets besides status and error, for a job the plugin closes with one UPDATE:
    ``completed``, and ``execution_time`` (its run time, ``completed - started``) where Job has it (4.7+).
    """
    from django.db.models import DurationField, ExpressionWrapper, F, Value

    values = {'completed': completed}
    if _job_has_field('execution_time'):
        values['execution_time'] = ExpressionWrapper(Value(completed) - F('started'), output_field=DurationField())
    return values


def netbox_configuration():
    """
    NetBox's configuration module (``configuration.py``), as NetBox's settings module loaded it: ``configuration`` in
    that module on every supported release (4.7's ``load_configuration()``, ``importlib.import_module`` before).
    ``None`` when Django runs with another settings module that does not hold one. The settings module is named by
    the environment, as Django reads it: ``settings.SETTINGS_MODULE`` is ``None`` inside ``override_settings``.
    """
    import os

    from django.conf import ENVIRONMENT_VARIABLE, settings

    name = os.environ.get(ENVIRONMENT_VARIABLE) or getattr(settings, 'SETTINGS_MODULE', None) or ''
    return getattr(sys.modules.get(name), 'configuration', None)


def next_run_kwargs(job):
    """
    What NetBox's ``handle()`` carries over from a periodic job to its next run, besides name, user, object and
    interval: the job's ``notifications`` setting where Job has it (4.6+); nothing before.
    """
    return {'notifications': job.notifications} if _job_has_field('notifications') else {}


def is_not_updated(exc):
    """
    True when ``exc`` is Django's refusal of a forced UPDATE that touched no row (the row is gone), as opposed to an
    error of the database: ``ObjectNotUpdated`` on Django 6.0+ (NetBox 4.6 and later), a plain ``DatabaseError`` with
    Django's message before (Django 5.1 – 5.2, NetBox 4.2 – 4.5).
    """
    from django.core import exceptions
    from django.db import DatabaseError

    not_updated = getattr(exceptions, 'ObjectNotUpdated', None)
    if not_updated is not None and isinstance(exc, not_updated):
        return True
    return type(exc) is DatabaseError and 'did not affect any rows' in str(exc)


# The earliest next run NetBox 4.4.2+ give a periodic job, from now (#20450).
NEXT_RUN_MIN_DELAY = 60
# Seconds between NetBox's reading of the clock and this module's, allowed for: a value NetBox already raised to its
# floor is left exactly as it is.
_NEXT_RUN_SLACK = 5


def next_run_floor(schedule_at, now=None):
    """
    The next run of a periodic job as NetBox's ``handle()`` asks for it, but never in the past: at least one minute
    from now, as NetBox itself computes it from 4.4.2 (#20450: ``max(scheduled + interval, now + 1 minute)``).
    NetBox 4.2.0 – 4.4.1 schedule it at ``scheduled + interval`` even when that is long past: a job whose runs were
    missed while no worker ran then fires every missed run back to back, one per interval missed (#20243). Detected
    from the value, not the version: what NetBox already raised to its floor (or a next run on time) comes back
    unchanged.
    """
    from datetime import timedelta

    from django.utils import timezone

    if schedule_at is None:
        return None
    floor = (now or timezone.now()) + timedelta(seconds=NEXT_RUN_MIN_DELAY)
    if schedule_at < floor - timedelta(seconds=_NEXT_RUN_SLACK):
        return floor
    return schedule_at


# --------------------------------------------------------------------------------------------------------------------
# Web UI, REST API, GraphQL and event rules (issue 5)
# --------------------------------------------------------------------------------------------------------------------

# NetBox < 4.4 names the buttons of a generic view in a dict of action name -> permissions; 4.4 and later take
# ObjectAction classes (4.4 still converts the dict, 4.7 no longer does).
_LEGACY_ACTION_PERMISSIONS = {
    'export': {'view'},
    'bulk_delete': {'delete'},
    'delete': {'delete'},
}
_ACTION_CLASSES = {
    'export': 'BulkExport',
    'bulk_delete': 'BulkDelete',
    'delete': 'DeleteObject',
}


def view_actions(*names):
    """
    The ``actions`` of a generic view for the given action names (``export``, ``bulk_delete``, ``delete``): a tuple
    of ``netbox.object_actions`` classes where they exist (4.4+), else the legacy dict of required permissions.
    """
    try:
        from netbox import object_actions
    except ImportError:
        return {name: set(_LEGACY_ACTION_PERMISSIONS[name]) for name in names}
    return tuple(getattr(object_actions, _ACTION_CLASSES[name]) for name in names)


def bulk_stop_action():
    """
    The "Stop selected" action of the jobs-in-flight list: a ``netbox.object_actions.ObjectAction`` (4.4+) rendering
    the plugin's button, or the legacy action name (4.2-4.3), whose button the list template adds itself. Its
    permission (``core.stop_job``) is checked by the view, since it is not one of the listed model's.
    """
    try:
        from netbox.object_actions import ObjectAction
    except ImportError:
        return 'bulk_stop'

    class BulkStop(ObjectAction):
        name = 'bulk_stop'
        label = 'Stop Selected'
        multi = True
        template_name = 'netbox_safejobs/buttons/bulk_stop.html'

    return BulkStop


def register_filterset(filterset_class):
    """NetBox's ``register_filterset`` decorator (4.5+), a no-op before."""
    try:
        from utilities.filtersets import register_filterset as register
    except ImportError:
        return filterset_class
    return register(filterset_class)


def register_stop_action():
    """
    Offer the ``stop`` action of ``core | job`` as a checkbox of NetBox's object permission form, through
    ``utilities.permissions.register_model_actions`` (NetBox 4.6 and later). Earlier releases check any action named
    in a permission's "additional actions" the same way; only the checkbox is missing. Returns ``None``, or why the
    checkbox is not offered.
    """
    try:
        from core.models import Job
        from utilities.permissions import ModelAction, register_model_actions
    except ImportError as e:
        return f'this NetBox has no registration of model actions ({e}); type "stop" under additional actions'
    register_model_actions(Job, [ModelAction('stop', help_text='Stop a running job (netbox-safejobs)')])
    return None


def graphql_legacy_filters():
    """
    True on NetBox 4.2, whose GraphQL filters are generated from a django-filter FilterSet
    (``netbox.graphql.filter_mixins.autotype_decorator``); 4.3 and later declare strawberry-django lookups.
    """
    try:
        from netbox.graphql import filter_mixins
    except ImportError:
        return False
    return hasattr(filter_mixins, 'autotype_decorator')


def graphql_type(model, **kwargs):
    """The decorator of a model's GraphQL output type: ``register_type`` (4.7+), else ``strawberry_django.type``."""
    try:
        from netbox.graphql.types import register_type
    except ImportError:
        import strawberry_django

        decorator = strawberry_django.type
        if 'pagination' in kwargs and 'pagination' not in inspect.signature(decorator).parameters:
            kwargs.pop('pagination')
        return decorator(model, **kwargs)
    return register_type(model, **kwargs)


def graphql_filter(model, **kwargs):
    """
    The decorator of a model's GraphQL filter: ``register_filter`` (4.7+), else strawberry-django's ``filter_type``
    (or ``filter`` where ``filter_type`` does not exist yet).
    """
    try:
        from netbox.graphql.filters import register_filter
    except ImportError:
        import strawberry_django

        decorator = getattr(strawberry_django, 'filter_type', None) or strawberry_django.filter
        return decorator(model, **kwargs)
    return register_filter(model, **kwargs)


def graphql_filter_base():
    """
    ``(base class, declares id)`` for a plain model's GraphQL filter: ``netbox.graphql.filters.BaseModelFilter``
    (4.5+, declares ``id``), else ``core.graphql.filter_mixins.BaseFilterMixin`` (4.3, 4.4; the filter declares
    ``id`` itself).
    """
    try:
        from netbox.graphql.filters import BaseModelFilter
    except ImportError:
        from core.graphql.filter_mixins import BaseFilterMixin

        return BaseFilterMixin, False
    return BaseModelFilter, True


def graphql_lookups():
    """
    strawberry-django's lookup input types by value type, as the installed version spells them: ``str``,
    ``datetime``, ``int``, ``float`` and ``uuid``. Older strawberry-django releases take the value type as a
    parameter; detected from the class (``__parameters__``), so it serves whichever release a supported NetBox
    installs, and can go with the last NetBox that installs a parameterised one. ``StrFilterLookup`` is missing from
    the strawberry-django of NetBox 4.3.0 – 4.4.9 (0.58 – 0.70). NetBox 4.2 does not ask (``graphql_legacy_filters``).
    """
    import datetime
    import uuid

    import strawberry_django

    def parametrised(cls, value_type):
        return cls[value_type] if getattr(cls, '__parameters__', ()) else cls

    lookup = strawberry_django.FilterLookup
    comparison = getattr(strawberry_django, 'ComparisonFilterLookup', None)
    base = getattr(strawberry_django, 'BaseFilterLookup', None) or lookup
    str_lookup = getattr(strawberry_django, 'StrFilterLookup', None)
    datetime_lookup = getattr(strawberry_django, 'DatetimeFilterLookup', None)
    return {
        'str': str_lookup if str_lookup is not None else lookup[str],
        'datetime': parametrised(datetime_lookup, datetime.datetime) if datetime_lookup else lookup[datetime.datetime],
        'int': comparison[int] if comparison else lookup[int],
        'float': comparison[float] if comparison else lookup[float],
        'uuid': base[uuid.UUID],
    }


def process_event_rules(event_rules, object_type, event_type, data):
    """
    Run NetBox's ``extras.events.process_event_rules`` for one event outside a request: 4.6+ take an event context
    (``EventContext``), earlier releases the event type and data as arguments.
    """
    from extras import events

    params = inspect.signature(events.process_event_rules).parameters
    if 'event' in params:
        context_class = getattr(events, 'EventContext', dict)
        event = context_class(event_type=event_type, data=data, user=None, object_type=object_type)
        return events.process_event_rules(event_rules, object_type, event)
    return events.process_event_rules(event_rules, object_type, event_type, data)


def may_view_background_tasks(request):
    """
    Whether NetBox shows ``request.user`` its Background Tasks pages (RQ queues, tasks and workers): NetBox's own test
    of those views, ``core.views.BaseRQView.test_func``, which asks for ``is_staff`` on NetBox 4.2 - 4.4 and for
    ``is_superuser`` from 4.5. False where that view does not exist.
    """
    try:
        from core.views import BaseRQView
    except ImportError:
        return False
    view = BaseRQView()
    view.request = request
    try:
        return bool(view.test_func())
    except Exception:
        logger.debug('Cannot ask NetBox whether the user may view Background Tasks', exc_info=True)
        return False


def warm_object_types():
    """
    Answer, once in this process, the question NetBox's ``ObjectTypeManager.get_for_model()`` asks PostgreSQL on its
    first call in every process: does ``core_objecttype`` exist yet (``connection.introspection.table_names()``, a
    ``pg_class`` scan)? NetBox keeps the answer in a class attribute (``_table_exists``, since the fix of NetBox #21231
    in 4.5.1; 4.2.0 – 4.5.0 ask on every call); a work horse forked from a worker that never asked asks again, for
    every job. Asked through NetBox's own call. Returns whether the answer is kept (False without the attribute).
    """
    try:
        from core.models import Job
        from core.models.object_types import ObjectType, ObjectTypeManager
    except ImportError:
        return False
    if not hasattr(ObjectTypeManager, '_table_exists'):
        return False
    ObjectType.objects.get_for_model(Job)
    return bool(ObjectTypeManager._table_exists)


def event_rule_action_provider():
    """
    ``(EventRule, None)`` where event rules run actions that plugins register (NetBox 4.7:
    ``netbox.event_rules.register_event_rule_action``, each rule's ``action_provider`` property), else
    ``(None, reason)`` (4.2 – 4.6: a rule's action is one of NetBox's own).
    """
    try:
        from extras.models import EventRule
    except ImportError as e:
        return None, f'extras.models cannot be imported ({e})'
    provider = EventRule.__dict__.get('action_provider')
    if not isinstance(provider, property) or provider.fget is None:
        return None, "this NetBox's event rules run only NetBox's own actions"
    return EventRule, None


def webhook_push_module():
    """
    ``(module, None)``: the module whose ``get_queue`` global pushes event rules' webhooks to RQ
    (``get_queue(...).enqueue('extras.webhooks.send_webhook', ...)``): ``extras.event_rules`` (``WebhookAction``,
    NetBox 4.7) or ``extras.events`` (``process_event_rules``, 4.2 – 4.6); or ``(None, reason)``. Found by what the
    module's code pushes, not by a version number.
    """
    import importlib

    for name in ('extras.event_rules', 'extras.events'):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if not callable(getattr(module, 'get_queue', None)):
            continue
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        if 'extras.webhooks.send_webhook' in source:
            return module, None
    return None, 'no module of extras pushes extras.webhooks.send_webhook through a get_queue global'


# The modules that ask whether a worker listens before they push (a script run from the UI and the REST API; a
# background API request and the search cache of 4.7), each importing the check by name.
_WORKER_CHECK_USERS = ('extras.views', 'extras.api.views', 'netbox.api.viewsets.mixins', 'netbox.search.deferred')


def worker_checks():
    """
    ``[(module, name, counts)]``: NetBox's "is a worker running?" functions, ``any_workers_for_queue`` (a bool; 4.6.2+)
    and ``get_workers_for_queue`` (a number; every supported NetBox), in ``utilities.rqworker`` and in each module
    of ``_WORKER_CHECK_USERS`` already imported under that name. The views import them when the URLconf loads, after
    the plugin's ``ready()``: they take the wrapper from ``utilities.rqworker``.
    """
    import importlib

    try:
        modules = [importlib.import_module('utilities.rqworker')]
    except ImportError:
        return []
    modules += [sys.modules[name] for name in _WORKER_CHECK_USERS if name in sys.modules]
    return [(module, name, name.startswith('get_')) for module in modules
            for name in ('any_workers_for_queue', 'get_workers_for_queue') if callable(getattr(module, name, None))]


def safe_for_redirect(url):
    """
    NetBox's own check of a URL taken from a request (``return_url``) before it is shown as a link or redirected to:
    ``utilities.request.safe_for_redirect`` where NetBox has it; before, its ``GetReturnURLMixin`` called Django's
    ``url_has_allowed_host_and_scheme(url, allowed_hosts=None)`` itself, which is what that function wraps.
    """
    try:
        from utilities.request import safe_for_redirect as check
    except ImportError:
        from django.utils.http import url_has_allowed_host_and_scheme

        return url_has_allowed_host_and_scheme(url, allowed_hosts=None)
    return check(url)

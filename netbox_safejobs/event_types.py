"""
The NetBox event types of the plugin, for event rules (webhooks, scripts, notifications):

- ``netbox_safejobs.job_gave_up``: the worker guard gave up on a job whose row never appeared;
- ``netbox_safejobs.dispatch_failed``: a committed job's push to Redis failed (the recovery pass sends it later).

An event rule on the object type "Safe Jobs > retry event" with one of these event types receives the event
serialized as in the REST API. Triggered by ``events.record()`` only, after the event row is committed.
"""

import importlib
import logging

from django.utils.translation import gettext as _

from . import compat
from .choices import RetryEventKindChoices

__all__ = (
    'DISPATCH_FAILED',
    'EVENT_TYPES',
    'JOB_GAVE_UP',
    'register',
    'trigger',
)

logger = logging.getLogger('netbox_safejobs.event_types')

JOB_GAVE_UP = 'netbox_safejobs.job_gave_up'
DISPATCH_FAILED = 'netbox_safejobs.dispatch_failed'

# Event kind -> NetBox event type name
EVENT_TYPES = {
    RetryEventKindChoices.KIND_GAVE_UP: JOB_GAVE_UP,
    RetryEventKindChoices.KIND_DISPATCH_FAILED: DISPATCH_FAILED,
}


def register():
    """
    Register the event types in NetBox's registry (from ``ready()``; a second call changes nothing), and have NetBox's
    event rule forms offer them: those forms were built before any plugin was ready.
    """
    from netbox.events import EVENT_TYPE_KIND_DANGER, EVENT_TYPE_KIND_WARNING, EventType
    from netbox.registry import registry

    for name, text, kind in (
        (JOB_GAVE_UP, _('Job gave up (safe jobs)'), EVENT_TYPE_KIND_DANGER),
        (DISPATCH_FAILED, _('Job dispatch failed (safe jobs)'), EVENT_TYPE_KIND_WARNING),
    ):
        if name not in registry['event_types']:
            EventType(name, text, kind=kind).register()
    changed = _refresh_event_type_choices()
    if changed:
        logger.debug('Event type choices of %s now follow the registry', ', '.join(changed))


# The forms whose event_types field NetBox builds with get_event_type_choices() called once, at import.
_EVENT_RULE_FORMS = (
    ('extras.forms.model_forms', 'EventRuleForm'),
    ('extras.forms.bulk_edit', 'EventRuleBulkEditForm'),
    ('extras.forms.bulk_import', 'EventRuleImportForm'),
)


def _refresh_event_type_choices():
    """
    Make the ``event_types`` choices of NetBox's event rule add/edit, bulk edit and import forms follow the registry
    of event types, so that the plugin's types can be chosen. Returns the names of the forms changed.

    Needed on NetBox 4.2.0 - 4.7.x (every release with plugin event types up to the one this was written against):
    those three forms call ``get_event_type_choices()`` once, when ``extras.forms`` is imported, and extras' own
    ``ready()`` imports it before any plugin's ``ready()`` can register a type. The filter form and the model field
    already take the function itself. Feature-detected, not by version: a form whose field already offers every
    registered type (a NetBox that reads the registry on each use) is left as it is. The field is given
    ``get_event_type_choices`` itself, so types registered later (by other plugins) appear too.
    """
    from netbox.events import get_event_type_choices
    from netbox.registry import registry

    changed = []
    for module_name, class_name in _EVENT_RULE_FORMS:
        try:
            form_class = getattr(importlib.import_module(module_name), class_name)
            field = form_class.base_fields['event_types']
        except (ImportError, AttributeError, KeyError):
            logger.debug('%s.%s has no event_types field to refresh', module_name, class_name)
            continue
        offered = {str(value) for value, _label in field.choices}
        if set(registry['event_types']) <= offered:
            continue
        field.choices = get_event_type_choices
        changed.append(class_name)
    return changed


def trigger(event, using='default'):
    """
    Run the enabled event rules for a stored ``RetryEvent`` whose kind has an event type. Returns the number of
    rules matched. Never raises: the event is already stored and logged, and a failing webhook queue (Redis down is
    what "dispatch failed" is about) must not disturb the job.
    """
    event_type = EVENT_TYPES.get(event.kind)
    if event_type is None or event.pk is None:
        return 0
    try:
        from core.models import ObjectType
        from extras.events import serialize_for_event
        from extras.models import EventRule

        object_type = ObjectType.objects.db_manager(using).get_for_model(type(event))
        rules = list(EventRule.objects.using(using).filter(
            event_types__contains=[event_type], object_types=object_type, enabled=True,
        ))
        if not rules:
            return 0
        # NetBox's own serialization of an object for its event rules: the plugin's REST serializer, found by name,
        # so that this module needs nothing from the API above it.
        data = serialize_for_event(event)
        compat.process_event_rules(rules, object_type, event_type, data)
        return len(rules)
    except Exception:
        logger.exception('Event rules for %s (retry event %s) could not be processed', event_type, event.pk)
        return 0

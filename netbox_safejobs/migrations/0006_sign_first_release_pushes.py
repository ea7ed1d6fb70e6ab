"""
Sign the pushes the first release (0.1.0) stored unsigned.

0.1.0 kept a push as the bare pickle of ``(method, args, kwargs)``; later releases sign every stored push and refuse
an unsigned one, so an upgrade with jobs in flight errored each of them ("stored push has a bad signature"). The
operator's own ``netbox migrate`` is the one moment such a blob can be read: it is unpickled here once, checked to be a
push, and stored again signed. A blob that is neither signed nor a readable 0.1.0 push is left as it is; the relay then
errors its job with one event, as it does for any push that is not ours.

Whoever can write a row must not run code on the host that migrates, which the signing exists to prevent: the blob is
read by ``PushUnpickler``, which builds only what a push of 0.1.0 holds (a runner's ``handle``, model instances, dates,
UUIDs, plain containers, addresses, NetBox's copy of a request) and refuses any other global before it is called. No
module is imported for it: a class is taken only from a module NetBox has already loaded.
"""

import builtins
import collections
import copyreg
import datetime
import decimal
import io
import pickle
import sys
import uuid
import zoneinfo

from django.db import migrations

from netbox_safejobs.payload import Push, is_signed, seal

METHODS = ('enqueue', 'enqueue_at')

# The globals a push of 0.1.0 may name, besides model instances (``model_unpickle``), runner classes and their
# ``handle``: NetBox's ``Job.enqueue`` pushed ``runner.handle`` with the Job, a script its request, user and data.
ALLOWED = {
    **{('builtins', name): getattr(builtins, name)
       for name in ('set', 'frozenset', 'bytearray', 'complex', 'slice', 'range')},
    **{('datetime', name): getattr(datetime, name)
       for name in ('datetime', 'date', 'time', 'timedelta', 'timezone')},
    ('copyreg', '_reconstructor'): copyreg._reconstructor,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('decimal', 'Decimal'): decimal.Decimal,
    ('uuid', 'UUID'): uuid.UUID,
    ('uuid', 'SafeUUID'): uuid.SafeUUID,
    ('zoneinfo', 'ZoneInfo'): zoneinfo.ZoneInfo,
    ('zoneinfo', 'ZoneInfo._unpickle'): zoneinfo.ZoneInfo._unpickle,
    ('zoneinfo._zoneinfo', 'ZoneInfo'): zoneinfo.ZoneInfo,
    ('zoneinfo._zoneinfo', 'ZoneInfo._unpickle'): zoneinfo.ZoneInfo._unpickle,
}
# Modules (and their submodules) whose classes, classes only, a script's data or request may hold.
ALLOWED_MODULES = ('netaddr', 'utilities.request')


def _runner_class():
    from netbox.jobs import JobRunner

    return JobRunner


def _handle_of(runner, name):
    """``getattr`` as a pickled bound method calls it: ``runner.handle`` of a runner class, nothing else."""
    if isinstance(runner, type) and issubclass(runner, _runner_class()) and name == 'handle':
        return runner.handle
    raise pickle.UnpicklingError(f'getattr({runner!r}, {name!r}) is not part of a push')


class PushUnpickler(pickle.Unpickler):
    """Builds what a 0.1.0 push holds, nothing else: each global the blob names is checked before it is used."""

    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if (module, name) == ('builtins', 'getattr'):
            return _handle_of
        if module == 'django.db.models.base' and name in ('model_unpickle', 'ModelState'):
            from django.db.models import base

            return getattr(base, name)
        loaded = sys.modules.get(module)
        value = getattr(loaded, name, None) if loaded is not None and '.' not in name else None
        if isinstance(value, type) and (issubclass(value, _runner_class()) or any(
                module == allowed or module.startswith(f'{allowed}.') for allowed in ALLOWED_MODULES)):
            return value
        raise pickle.UnpicklingError(f'{module}.{name} is not part of a push')


def _first_release_push(data):
    try:
        value = PushUnpickler(io.BytesIO(data)).load()
    except Exception:
        return None
    if (isinstance(value, tuple) and len(value) == 3 and value[0] in METHODS and isinstance(value[1], (tuple, list))
            and isinstance(value[2], dict)):
        return Push(*value)
    return None


def sign_first_release_pushes(apps, schema_editor):
    JobDispatch = apps.get_model('netbox_safejobs', 'JobDispatch')
    rows = JobDispatch.objects.using(schema_editor.connection.alias).filter(payload__isnull=False)
    for row in rows.only('pk', 'payload').iterator():
        data = bytes(row.payload)
        if is_signed(data):
            continue
        push = _first_release_push(data)
        if push is not None:
            JobDispatch.objects.using(schema_editor.connection.alias).filter(pk=row.pk).update(payload=seal(push))


class Migration(migrations.Migration):

    dependencies = [
        ('netbox_safejobs', '0005_search_words_and_in_flight_order'),
    ]

    operations = [
        migrations.RunPython(sign_first_release_pushes, migrations.RunPython.noop),
    ]

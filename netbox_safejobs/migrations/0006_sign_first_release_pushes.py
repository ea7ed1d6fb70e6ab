"""
Sign the pushes the first release (0.1.0) stored unsigned.

0.1.0 kept a push as the bare pickle of ``(method, args, kwargs)``; later releases sign every stored push and refuse
an unsigned one, so an upgrade with jobs in flight errored each of them ("stored push has a bad signature"). The
operator's own ``netbox migrate`` is the one moment such a blob can be trusted: it is unpickled here once, checked to
be a push, and stored again signed. A blob that is neither signed nor a readable 0.1.0 push is left as it is; the
relay then errors its job with one event, as it does for any push that is not ours.
"""

import pickle

from django.db import migrations

from netbox_safejobs.payload import Push, is_signed, seal

METHODS = ('enqueue', 'enqueue_at')


def _first_release_push(data):
    try:
        value = pickle.loads(data)
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

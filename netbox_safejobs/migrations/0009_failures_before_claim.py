"""
How many times a task failed in RQ before a worker claimed it (the relay sends such a task again after a backoff, up
to a limit), and an index for the relay's sweep of sent rows, which reads them oldest first from where it stopped.

The new column has a database default: a worker of the previous release still writing rows during a rolling upgrade
inserts rows this release reads. No dependency on a NetBox migration: the plugin's tables refer only to ``core.Job``,
which every supported NetBox has.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('netbox_safejobs', '0008_stop_requests'),
    ]

    operations = [
        migrations.AddField(
            model_name='jobdispatch',
            name='failures',
            field=models.PositiveSmallIntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.AddIndex(
            model_name='jobdispatch',
            index=models.Index(
                condition=models.Q(('claimed__isnull', True), ('sent__isnull', False)), fields=['sent', 'id'],
                name='netbox_safejobs_sweep_idx',
            ),
        ),
    ]

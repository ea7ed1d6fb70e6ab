"""
Tasks that are not NetBox jobs (event rules' webhooks) in the outbox, and the queues each worker listens on.

Every new column has a database default, and the Job link only loses its NOT NULL: a worker of the previous release
still writing during a rolling upgrade inserts rows and heartbeats this release reads.

Migrating back below this migration puts NOT NULL on the Job link again, which the rows of webhooks in flight cannot
take: they are deleted first, and how many is logged. A release before 0.3.0 neither sends nor keeps them.
"""

import logging

from django.db import migrations, models

logger = logging.getLogger('netbox_safejobs.migrations')


def delete_tasks_without_jobs(apps, schema_editor):
    """Before the Job link is NOT NULL again (migrating back): the rows of webhooks in flight, which have no job."""
    JobDispatch = apps.get_model('netbox_safejobs', 'JobDispatch')
    deleted, _ = JobDispatch.objects.using(schema_editor.connection.alias).filter(job__isnull=True).delete()
    if deleted:
        logger.warning('migrating back below 0007: deleted %d webhook(s) in flight, which releases before 0.3.0 '
                       'cannot hold (no job); their tasks already sent to Redis may still run', deleted)


class Migration(migrations.Migration):

    # Only the plugin's own migrations: it migrates on every supported NetBox (4.2.0 and later).
    dependencies = [
        ('netbox_safejobs', '0006_sign_first_release_pushes'),
    ]

    operations = [
        migrations.AlterField(
            model_name='jobdispatch',
            name='job',
            field=models.OneToOneField(editable=False, null=True, on_delete=models.deletion.CASCADE,
                                       related_name='+', to='core.job'),
        ),
        # After the AlterField, so that migrating back runs it first.
        migrations.RunPython(migrations.RunPython.noop, delete_tasks_without_jobs),
        migrations.AddField(
            model_name='jobdispatch',
            name='name',
            field=models.CharField(blank=True, db_default='', default='', editable=False, max_length=200),
        ),
        migrations.AddField(
            model_name='jobdispatch',
            name='gave_up',
            field=models.DateTimeField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name='workerheartbeat',
            name='queues',
            field=models.CharField(blank=True, db_default='', default='', editable=False, help_text='Space-separated',
                                   max_length=1000),
        ),
    ]

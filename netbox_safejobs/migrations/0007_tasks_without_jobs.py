"""
Tasks that are not NetBox jobs (event rules' webhooks) in the outbox, and the queues each worker listens on.

Every new column has a database default, and the Job link only loses its NOT NULL: a worker of the previous release
still writing during a rolling upgrade inserts rows and heartbeats this release reads.
"""

from django.db import migrations, models


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

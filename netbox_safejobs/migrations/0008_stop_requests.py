"""
An operator's stop of a running job, kept on its lease (when, who, whether a periodic job gets its next run), and the
name the pages use for a row: a job in flight.

Every new column has a database default: a worker of the previous release still claiming jobs during a rolling upgrade
inserts leases this release reads.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('netbox_safejobs', '0007_tasks_without_jobs'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='jobdispatch',
            options={'ordering': ('created', 'pk'), 'verbose_name': 'job in flight',
                     'verbose_name_plural': 'jobs in flight'},
        ),
        migrations.AddField(
            model_name='jobdispatch',
            name='stop_requested',
            field=models.DateTimeField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name='jobdispatch',
            name='stopped_by',
            field=models.CharField(blank=True, db_default='', default='', editable=False, max_length=150),
        ),
        migrations.AddField(
            model_name='jobdispatch',
            name='stop_next_run',
            field=models.BooleanField(db_default=True, default=True, editable=False),
        ),
    ]

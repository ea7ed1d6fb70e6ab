"""
The quick search reads stored words; the jobs in flight list reads its order and a job's UUID from indexes.

- ``RetryEvent.search_words``: the words of the quick search, a stored generated column (PostgreSQL 12+), and the
  full-text index on it instead of on the expression. Checking an event against a search no longer parses its text
  (docs/performance.md: a quick search combined with another filter counted 1,000 matches in 155 ms of SQL, 13 to
  22 ms with the stored words, on 1,000,000 events).
- ``JobDispatch (created, id)``: the default order and the age sort of jobs in flight, which sorted every row for
  each page (120 ms with 100,000 rows in flight; 0.7 ms from the index); ``JobDispatch (job_uuid)``: a job's row in
  flight by its UUID (the quick search, the ``job_uuid`` filter), which read every row.

Adding the column rewrites the event table: 1 min 28 s for 1,000,000 events on 2 CPUs, with the table locked for
writes, so on an installation with millions of events, migrate while the workers are stopped.
"""

import django.contrib.postgres.indexes
import django.contrib.postgres.search
import django.db.models.functions.text
from django.db import migrations, models

import netbox_safejobs.fields


class Migration(migrations.Migration):

    # Only the plugin's own migrations: it migrates on every supported NetBox (4.2.0 and later).
    dependencies = [
        ('netbox_safejobs', '0004_event_list_indexes'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='retryevent',
            name='netbox_safejobs_search_idx',
        ),
        migrations.AddField(
            model_name='retryevent',
            name='search_words',
            field=netbox_safejobs.fields.StoredGeneratedField(
                db_persist=True,
                expression=django.contrib.postgres.search.SearchVector(
                    'job_name',
                    django.db.models.functions.text.Replace('runner', models.Value('.'), models.Value(' ')),
                    'worker_host', 'detail', config='simple',
                ),
                output_field=django.contrib.postgres.search.SearchVectorField(),
            ),
        ),
        migrations.AddIndex(
            model_name='retryevent',
            index=django.contrib.postgres.indexes.GinIndex(fields=['search_words'], name='netbox_safejobs_search_idx'),
        ),
        migrations.AddIndex(
            model_name='jobdispatch',
            index=models.Index(fields=['created', 'id'], name='netbox_safejobs_created_idx'),
        ),
        migrations.AddIndex(
            model_name='jobdispatch',
            index=models.Index(fields=['job_uuid'], name='netbox_safejobs_dispatch_uuid'),
        ),
        # Statistics of the new column's words (the most frequent ones and their shares), which PostgreSQL uses to
        # choose between reading a search newest first and reading the full-text index.
        migrations.RunSQL('ANALYZE netbox_safejobs_retryevent', migrations.RunSQL.noop),
    ]

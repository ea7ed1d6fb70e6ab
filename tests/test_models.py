"""The RetryEvent model: creation, ordering, the job link nulled on Job deletion with the snapshot kept."""

import re
import uuid
from datetime import timedelta

from core.models import Job
from django.contrib.postgres.search import SearchQuery
from django.db import connection, transaction
from django.test import TestCase
from django.utils import timezone

from netbox_safejobs.choices import RetryEventKindChoices
from netbox_safejobs.filtersets import RetryEventFilterSet
from netbox_safejobs.models import RetryEvent
from netbox_safejobs.word_search import search_terms


def make_job(name='test job'):
    return Job.objects.create(name=name, job_id=uuid.uuid4())


class RetryEventModelTest(TestCase):

    def test_create(self):
        job = make_job()
        event = RetryEvent.objects.create(
            job=job, job_uuid=job.job_id, job_name=job.name, runner='netbox.jobs.AsyncViewJob', queue='default',
            kind=RetryEventKindChoices.KIND_RETRY, attempt=1, delay=0.5, detail='row not visible yet',
            worker_host='worker-1', worker_pid=4242,
        )
        event.refresh_from_db()
        self.assertEqual(event.job, job)
        self.assertEqual(event.get_kind_display(), 'Retry')
        self.assertEqual(event.get_kind_color(), 'yellow')
        self.assertEqual(str(event), 'Retry: test job')
        self.assertLess(abs((timezone.now() - event.time).total_seconds()), 60)

    def test_default_ordering_newest_first(self):
        now = timezone.now()
        job_uuid = uuid.uuid4()
        old = RetryEvent.objects.create(job_uuid=job_uuid, kind='retry', time=now - timedelta(minutes=5))
        new = RetryEvent.objects.create(job_uuid=job_uuid, kind='gave_up', time=now)
        same_time = RetryEvent.objects.create(job_uuid=job_uuid, kind='retry', time=now)
        self.assertEqual(list(RetryEvent.objects.all()), [same_time, new, old])

    def test_job_deletion_nulls_link_and_keeps_snapshot(self):
        job = make_job('nightly sync')
        event = RetryEvent.objects.create(job=job, job_uuid=job.job_id, job_name=job.name, kind='retry')
        job_uuid = job.job_id
        job.delete()
        event.refresh_from_db()
        self.assertIsNone(event.job)
        self.assertEqual(event.job_uuid, job_uuid)
        self.assertEqual(event.job_name, 'nightly sync')

    def test_event_without_job_row(self):
        """Most events are about a job whose row is not there; only the UUID identifies it."""
        job_uuid = uuid.uuid4()
        event = RetryEvent.objects.create(job_uuid=job_uuid, kind=RetryEventKindChoices.KIND_GAVE_UP)
        self.assertIsNone(event.job_id)
        self.assertEqual(str(event), f'Gave up: {job_uuid}')

    def test_restricted_queryset(self):
        self.assertTrue(hasattr(RetryEvent.objects.all(), 'restrict'))

    def test_indexes_serve_ordering_and_filters(self):
        with connection.cursor() as cursor:
            cursor.execute(
                'SELECT indexdef FROM pg_indexes WHERE tablename = %s', [RetryEvent._meta.db_table]
            )
            indexes = [row[0] for row in cursor.fetchall()]
        self.assertTrue(any('("time" DESC, id DESC)' in i for i in indexes), indexes)
        self.assertTrue(any('(job_uuid, "time" DESC)' in i for i in indexes), indexes)
        self.assertTrue(any('(kind, "time" DESC)' in i for i in indexes), indexes)


# Migration 0004: the list's filters and sorts (btree) and partial-text searches (pg_trgm).
LIST_INDEXES = {
    'netbox_safejobs_job_name_idx': '(job_name, job_uuid)',
    'netbox_safejobs_runner_idx': '(runner, "time" DESC)',
    'netbox_safejobs_queue_idx': '(queue, "time" DESC)',
    'netbox_safejobs_worker_idx': '(worker_host, "time" DESC)',
    'netbox_safejobs_worker_pid_idx': '(worker_pid, "time" DESC)',
    'netbox_safejobs_attempt_idx': '(attempt, "time" DESC)',
    'netbox_safejobs_delay_idx': '(delay, "time" DESC)',
}
TRIGRAM_INDEXES = {
    'netbox_safejobs_name_trgm': 'job_name',
    'netbox_safejobs_runner_trgm': 'runner',
    'netbox_safejobs_worker_trgm': 'worker_host',
}
# A plan node that sorts every matching row (an incremental sort of rows already in index order is not one).
FULL_SORT = re.compile(r'^\s*(->\s*)?Sort\s+\(', re.MULTILINE)


def has_pg_trgm():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        return cursor.fetchone() is not None


class EventListIndexTest(TestCase):
    """The indexes of migration 0004 exist and serve the list's filters, sorts and quick search."""

    def indexes(self):
        with connection.cursor() as cursor:
            cursor.execute('SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s',
                           [RetryEvent._meta.db_table])
            return dict(cursor.fetchall())

    def plan(self, queryset):
        """The plan of ``queryset`` with sequential scans and full sorts priced out: what the indexes can serve."""
        sql, params = queryset.query.sql_with_params()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute('SET LOCAL enable_seqscan = off')
            cursor.execute('SET LOCAL enable_sort = off')
            cursor.execute(f'EXPLAIN {sql}', params)
            return '\n'.join(row[0] for row in cursor.fetchall())

    def test_btree_indexes_exist(self):
        indexes = self.indexes()
        for name, columns in LIST_INDEXES.items():
            self.assertIn(name, indexes)
            self.assertIn(f'USING btree {columns}', indexes[name])

    def test_trigram_indexes_exist_where_pg_trgm_does(self):
        if not has_pg_trgm():
            self.skipTest('pg_trgm is not installed in the test database (migration 0004 could not create it)')
        indexes = self.indexes()
        for name, column in TRIGRAM_INDEXES.items():
            self.assertIn(name, indexes)
            self.assertIn(f'USING gin (upper(({column})::text) gin_trgm_ops)', indexes[name])

    def test_filters_and_sorts_read_an_index(self):
        queryset = RetryEvent.objects.all()
        cases = {
            'worker': {'worker': ['worker-1']},
            'worker_host': {'worker_host': ['worker-1']},
            'runner': {'runner': ['core.jobs.SyncDataSourceJob']},
            'queue': {'queue': ['low']},
            'job_name': {'job_name': ['nightly sync']},
            'attempt': {'attempt': [5]},
            'delay__gte': {'delay__gte': ['2.5']},
            'worker_pid': {'worker_pid': [101]},
            'job_exists': {'job_exists': 'true'},
            'time range': {'time__after': '2026-01-01T00:00:00Z', 'time__before': '2026-01-02T00:00:00Z'},
        }
        for label, params in cases.items():
            with self.subTest(label):
                plan = self.plan(RetryEventFilterSet(params, queryset).qs[:50])
                self.assertNotIn('Seq Scan', plan)
        # The table's orderings (RetryEventTable: the column, then newest first), either way.
        for ordering in (('delay', '-time'), ('-delay', 'time'), ('attempt', '-time'), ('runner', '-time'),
                         ('-queue', 'time'), ('worker_host', '-time'), ('-worker_pid', 'time'), ('kind', '-time'),
                         ('job_name', 'job_uuid'), ('-job_name', '-job_uuid'), ('job_uuid', '-time'),
                         ('time', 'id'), ('-id',)):
            with self.subTest(ordering=ordering):
                plan = self.plan(queryset.order_by(*ordering)[:50])
                self.assertNotIn('Seq Scan', plan)
                self.assertIsNone(FULL_SORT.search(plan), plan)

    def test_quick_search_reads_the_full_text_index(self):
        self.assertIn('USING gin (search_words)', self.indexes()['netbox_safejobs_search_idx'])
        # The look-up of the matching words (word_search.word_matches) is answered from the full-text index.
        for value in ('nightly', 'SyncData', 'worker-2', 'after 5 retries'):
            with self.subTest(value):
                query = SearchQuery(search_terms(value), search_type='raw', config='simple')
                plan = self.plan(RetryEvent.objects.filter(search_words=query).order_by())
                self.assertNotIn('Seq Scan', plan)
                self.assertIn('netbox_safejobs_search_idx', plan)
        # The rest of the quick search: queue and kinds, from their indexes.
        plan = self.plan(RetryEventFilterSet({'q': 'gave up'}, RetryEvent.objects.all()).qs.order_by())
        self.assertNotIn('Seq Scan', plan)
        self.assertIn('netbox_safejobs_kind_idx', plan)

    def test_partial_text_lookups_read_the_trigram_indexes(self):
        if not has_pg_trgm():
            self.skipTest('pg_trgm is not installed in the test database (migration 0004 could not create it)')
        queryset = RetryEvent.objects.all()
        for params in ({'job_name__ic': ['night']}, {'runner__ic': ['sync']}, {'worker_host__isw': ['work']},
                       {'worker_host__ie': ['WORKER-1']}):
            with self.subTest(params):
                # Unordered: in a table this small, the time index alone would be the cheapest way to the first rows.
                plan = self.plan(RetryEventFilterSet(params, queryset).qs.order_by())
                self.assertNotIn('Seq Scan', plan)
                self.assertIn('_trgm', plan)

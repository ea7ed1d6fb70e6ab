"""
The filter sets: NetBox's own checks (``test_missing_filters``: a model field without a filter fails), and one test
per retry event filter, on the fixture of ui_helpers.make_events().
"""

from datetime import timedelta
from unittest import mock

from django.test import TestCase
from django.utils import timezone
from utilities import testing as netbox_testing

from netbox_safejobs import bounded_count, filtersets, word_search
from netbox_safejobs.filtersets import JobDispatchFilterSet, RetryEventFilterSet
from netbox_safejobs.models import JobDispatch, RetryEvent

from .test_in_flight import make_dispatches
from .ui_helpers import make_events

# NetBox's filter set test mixin (BaseFilterSetTests in older releases).
BaseFilterSetTestMixin = (getattr(netbox_testing, 'BaseFilterSetTestMixin', None)
                          or netbox_testing.BaseFilterSetTests)


class RetryEventFilterSetTest(TestCase, BaseFilterSetTestMixin):
    queryset = RetryEvent.objects.all()
    filterset = RetryEventFilterSet
    # The detail text is found by its words, through the quick search ``q`` (``search_words``, its full-text index):
    # a filter of its own would read every event (no index serves a part of a free text).
    ignore_fields = ('detail', 'search_words')

    @classmethod
    def setUpTestData(cls):
        cls.data = make_events()
        cls.events = cls.data['events']

    def assertFilter(self, params, *indexes):
        filterset = self.filterset(params, self.queryset)
        self.assertTrue(filterset.is_valid(), filterset.errors)
        self.assertEqual(sorted(filterset.qs.values_list('pk', flat=True)),
                         sorted(self.events[i].pk for i in indexes))

    def assertInvalid(self, params):
        filterset = self.filterset(params, self.queryset)
        self.assertFalse(filterset.is_valid(), f'{params} should be rejected')

    def test_id(self):
        self.assertFilter({'id': [self.events[0].pk, self.events[5].pk]}, 0, 5)
        self.assertInvalid({'id': ['x']})

    def test_q(self):
        self.assertFilter({'q': str(self.data['uuid_c'])}, 4, 5)
        self.assertFilter({'q': 'NIGHTLY'}, 0, 1, 2)
        self.assertFilter({'q': 'ScriptJob'}, 3)
        self.assertFilter({'q': 'worker-2'}, 4, 5)
        self.assertFilter({'q': 'after 5 retries'}, 5)
        self.assertFilter({'q': 'high'}, 4, 5)
        self.assertFilter({'q': '  '}, 0, 1, 2, 3, 4, 5)

    def test_q_queue_is_exact_and_kinds_by_name_or_label(self):
        # The queue matches whole and case-sensitively (as RQ names queues); text columns match a part, ignoring case.
        self.assertFilter({'q': 'low'}, 0, 1, 2)
        self.assertFilter({'q': 'LOW'})
        # A kind by its label or its value, ignoring case.
        self.assertFilter({'q': 'gave up'}, 5)
        self.assertFilter({'q': 'GAVE_UP'}, 5)
        self.assertFilter({'q': 'dispatch'}, 3)
        # "retry" is part of two kinds' labels ("retries" in a detail text is not "retry").
        self.assertFilter({'q': 'retry'}, 0, 1, 2, 4)
        # Words in any order; the last one may be the start of a word, the others are whole words.
        self.assertFilter({'q': 'sync NIGHTLY'}, 0, 1, 2)
        self.assertFilter({'q': 'SyncData'}, 0, 1, 2)
        self.assertFilter({'q': 'syncdata nightly'})
        self.assertFilter({'q': 'ync'})
        self.assertFilter({'q': 'found after 5 retr'}, 5)
        # A hyphenated host is its words; a number is matched whole (worker-2 is not worker-20).
        self.assertFilter({'q': 'worker-2'}, 4, 5)
        self.assertFilter({'q': 'web-1'}, 3)
        self.assertFilter({'q': 'worker-20'})
        # A UUID is matched whole against the job's UUID only.
        self.assertFilter({'q': str(self.data['job_b'].job_id).upper()}, 3)

    def test_q_start_of_a_job_uuid(self):
        uuid_c = str(self.data['uuid_c'])
        # The 8 characters the tables show, any case, with or without the dashes, up to a whole UUID but one digit.
        for value in (uuid_c[:8], uuid_c[:8].upper(), f' {uuid_c[:8]} ', uuid_c[:9], uuid_c[:14], uuid_c[:35],
                      uuid_c.replace('-', '')[:12], uuid_c.replace('-', '')[:31]):
            with self.subTest(value=value):
                self.assertFilter({'q': value}, 4, 5)
        # Other text is not a UUID's start: too short, dashes where a UUID has none, not hexadecimal.
        for value in (uuid_c[:7], f'{uuid_c[:4]}-{uuid_c[4:8]}', 'zz' + uuid_c[2:8]):
            with self.subTest(value=value):
                self.assertFilter({'q': value})

    def test_q_start_of_a_job_uuid_is_a_range_of_the_job_uuid_index(self):
        low, high = filtersets.uuid_prefix_range('3A067877-9f')
        self.assertEqual((str(low), str(high)),
                         ('3a067877-9f00-0000-0000-000000000000', '3a067877-9fff-ffff-ffff-ffffffffffff'))
        self.assertEqual(filtersets.uuid_prefix_range('3a0678779f'), (low, high))
        for value in ('3a06787', '3a06-7877', 'nightly sync', '3a067877-9f-', '3a067877 9f', ''):
            with self.subTest(value=value):
                self.assertIsNone(filtersets.uuid_prefix_range(value))
        sql = str(self.filterset({'q': '3a067877'}, self.queryset).qs.query)
        self.assertIn('"job_uuid" BETWEEN', sql)

    def test_a_refused_value_selects_nothing(self):
        # django-filter leaves such a filter out (every row); here it selects none, and says why.
        for params in ({'job_uuid': [str(self.data['uuid_c'])[:8]]}, {'kind': ['nonsense']},
                       {'job_uuid': [str(self.data['uuid_c'])], 'attempt': ['many']}):
            with self.subTest(params=params):
                filterset = self.filterset(params, self.queryset)
                self.assertFalse(filterset.is_valid())
                self.assertEqual(list(filterset.qs), [])
        errors = self.filterset({'job_uuid': ['3a067877']}, self.queryset).errors
        self.assertIn('"3a067877" is not a whole job UUID', errors['job_uuid'][0])

    def test_q_with_many_matches_gives_the_same_rows(self):
        # Above SEARCH_IDS matches the condition is the full-text search itself rather than a list of IDs.
        with mock.patch.object(word_search, 'SEARCH_IDS', 1):
            self.assertFilter({'q': 'nightly'}, 0, 1, 2)
            self.assertFilter({'q': 'worker'}, 0, 1, 2, 4, 5)
            self.assertFilter({'q': 'ScriptJob'}, 3)

    def test_q_with_many_matches_is_known_to_count_more(self):
        with mock.patch.object(word_search, 'SEARCH_IDS', 2):
            self.assertEqual(bounded_count.count_at_least(self.filterset({'q': 'worker'}, self.queryset).qs), 3)
            # Another filter may leave fewer: nothing is known.
            qs = self.filterset({'q': 'worker', 'kind': ['gave_up']}, self.queryset).qs
            self.assertEqual(bounded_count.count_at_least(qs), 0)
            self.assertEqual(bounded_count.bounded_count(qs, 1), 1)
            # Two matches are read as IDs: counted.
            self.assertEqual(bounded_count.count_at_least(self.filterset({'q': 'lost job'}, self.queryset).qs), 0)

    def test_q_frequent_among_the_newest_events_is_read_newest_first(self):
        # RECENT_MATCHES of the newest RECENT_EVENTS match: the condition is the search, and those matches are known.
        with mock.patch.object(word_search, 'RECENT_MATCHES', 2):
            qs = self.filterset({'q': 'worker'}, self.queryset).qs
            self.assertEqual(bounded_count.count_at_least(qs), 5)
            self.assertNotIn('"id" IN', str(qs.query))
            self.assertFilter({'q': 'worker'}, 0, 1, 2, 4, 5)
            self.assertFilter({'q': 'worker-2'}, 4, 5)
            # Only the newest are checked: 'worker' is in 3 of the newest 3, 'nightly' in none of them.
            with mock.patch.object(word_search, 'RECENT_EVENTS', 3):
                newest = sorted(self.events, key=lambda event: (event.time, event.pk))[-3:]
                self.assertEqual(bounded_count.count_at_least(self.filterset({'q': 'worker'}, self.queryset).qs),
                                 sum(1 for event in newest if 'worker' in event.worker_host))
            # Fewer than RECENT_MATCHES: read from the full-text index, as IDs, and counted.
            qs = self.filterset({'q': 'ScriptJob'}, self.queryset).qs
            self.assertEqual(bounded_count.count_at_least(qs), 0)
            self.assertIn('"id" IN', str(qs.query))

    def test_lookups_never_add_distinct(self):
        for params in ({'runner__ic': ['sync']}, {'worker_host': ['worker-1']}, {'attempt__gte': [2]}, {'q': 'x'}):
            self.assertFalse(self.filterset(params, self.queryset).qs.query.distinct, params)

    def test_kind(self):
        self.assertFilter({'kind': ['retry']}, 0, 1, 4)
        self.assertFilter({'kind': ['gave_up', 'found_after_retry']}, 2, 5)
        self.assertInvalid({'kind': ['nonsense']})

    def test_job_id(self):
        self.assertFilter({'job_id': [self.data['job_a'].pk]}, 0, 1, 2)
        self.assertInvalid({'job_id': ['x']})
        self.assertInvalid({'job_id': [999999999]})

    def test_job_uuid(self):
        self.assertFilter({'job_uuid': [str(self.data['uuid_c']), str(self.data['job_b'].job_id)]}, 3, 4, 5)
        self.assertInvalid({'job_uuid': ['not-a-uuid']})

    def test_job_exists(self):
        self.assertFilter({'job_exists': True}, 0, 1, 2, 3)
        self.assertFilter({'job_exists': False}, 4, 5)

    def test_job_name(self):
        self.assertFilter({'job_name': ['lost job']}, 4, 5)
        self.assertFilter({'job_name__ic': ['RUN']}, 3)
        self.assertFilter({'job_name__n': ['lost job', 'nightly sync']}, 3)

    def test_runner(self):
        self.assertFilter({'runner': ['extras.jobs.ScriptJob']}, 3)
        self.assertFilter({'runner__isw': ['tests.']}, 4, 5)

    def test_queue(self):
        self.assertFilter({'queue': ['low', 'default']}, 0, 1, 2, 3)

    def test_worker(self):
        self.assertFilter({'worker': ['worker-2', 'web-1']}, 3, 4, 5)
        self.assertFilter({'worker_host__ic': ['WORKER']}, 0, 1, 2, 4, 5)
        self.assertFilter({'worker_pid': [303]}, 4, 5)
        self.assertInvalid({'worker_pid': ['x']})

    def test_attempt_and_delay(self):
        self.assertFilter({'attempt': [2]}, 1, 2)
        self.assertFilter({'attempt__gte': [5]}, 5)
        self.assertFilter({'delay__gt': [0.5]}, 2, 5)
        self.assertInvalid({'attempt': ['many']})
        self.assertInvalid({'delay__gte': ['slow']})

    def test_time_range(self):
        now = timezone.now()
        self.assertFilter({'time__after': now - timedelta(hours=1)}, 0, 1, 2)
        self.assertFilter({'time__before': now - timedelta(days=1)}, 4, 5)
        self.assertFilter({'time__after': now - timedelta(hours=3), 'time__before': now - timedelta(hours=1)}, 3)
        self.assertInvalid({'time__after': 'yesterday-ish'})

    def test_filters_combine(self):
        self.assertFilter({'kind': ['retry'], 'worker': ['worker-1'], 'attempt': [2]}, 1)


class JobDispatchFilterSetTest(TestCase, BaseFilterSetTestMixin):
    """Jobs in flight: every field has its filter, but what must never be searched for (docs/ui.md)."""
    queryset = JobDispatch.objects.all()
    filterset = JobDispatchFilterSet
    # The stored push and the claim's token are never shown, so never filtered on; the heartbeat is shown, and
    # filtering on it would be filtering on a clock that moves every few seconds: the state filter (stuck or not)
    # is the question an operator asks of it.
    ignore_fields = ('payload', 'token', 'heartbeat')

    @classmethod
    def setUpTestData(cls):
        make_dispatches()

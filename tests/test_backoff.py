"""The delay schedules of the worker guard."""

from itertools import islice

from django.test import SimpleTestCase

from netbox_safejobs.backoff import delays, exponential, fibonacci


class BackoffTest(SimpleTestCase):

    def test_fibonacci(self):
        self.assertEqual(list(islice(fibonacci(0.5), 7)), [0.5, 0.5, 1.0, 1.5, 2.5, 4.0, 6.5])

    def test_exponential(self):
        self.assertEqual(list(islice(exponential(0.5), 5)), [0.5, 1.0, 2.0, 4.0, 8.0])

    def test_retry_count(self):
        self.assertEqual(delays('fibonacci', 0.5, 5, 30), [0.5, 0.5, 1.0, 1.5, 2.5])
        self.assertEqual(delays('exponential', 0.5, 3, 30), [0.5, 1.0, 2.0])
        self.assertEqual(delays('fibonacci', 0.5, 0, 30), [])

    def test_total_wait_cap(self):
        # 0.5 + 0.5 + 1 + 1.5 = 3.5; the next 2.5 is cut to 0.5 to end exactly at the 4 s cap.
        self.assertEqual(delays('fibonacci', 0.5, 10, 4), [0.5, 0.5, 1.0, 1.5, 0.5])
        self.assertEqual(sum(delays('exponential', 1, 50, 60)), 60)
        self.assertEqual(delays('fibonacci', 0.5, 5, 0), [])

    def test_small_base(self):
        self.assertEqual(delays('fibonacci', 0.001, 3, 1), [0.001, 0.001, 0.002])

    def test_each_delay_capped(self):
        # The guard's reconnections: a database that is back is noticed within the cap.
        self.assertEqual(delays('fibonacci', 0.5, 8, float('inf'), max_each=2.0),
                         [0.5, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0])
        self.assertEqual(delays('exponential', 1, 4, 5, max_each=2.0), [1, 2.0, 2.0])

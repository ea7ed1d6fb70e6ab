"""
The test runner of `scripts/dev test` (``netbox test --testrunner tests.runner.SafeJobsTestRunner``): Django's, with
test classes spread over parallel processes that keep out of each other's way.

Most of the suite's time is spent waiting for real worker processes, so several test processes share the cores well.
Each gets what Django gives it (its own copy of the test database, ``<name>_<n>``) and what this suite needs besides:
its own Redis databases for RQ's tasks and NetBox's cache, since the tests empty their tasks database and the workers
they start must share it with them. The processes are started afresh (``spawn``) rather than forked, so that NetBox's
configuration reads the Redis databases of that process from the environment like any other setting, and every worker
a test starts inherits them.

Classes are handed out longest first (the time each took in the last run on this clone, kept in
``SAFEJOBS_TEST_TIMES``; classes that commit for real before the others when there is none), so that no long class
starts last.
"""

import json
import multiprocessing
import os
import time
from pathlib import Path

from django.test import TestCase, TransactionTestCase
from django.test import runner as django_runner

__all__ = (
    'SafeJobsParallelTestSuite',
    'SafeJobsTestRunner',
    'use_own_redis_databases',
)

TIME_EVENT = 'safejobsSubsuiteTime'


def redis_databases():
    """
    The (tasks, cache) Redis databases of test process 1, 2, ...: SAFEJOBS_TEST_REDIS_DATABASES ("7:8,10:11"), which
    `scripts/dev test` sets (its TEST_REDIS_DATABASES, or the caller's own, checked there).
    """
    value = os.environ.get('SAFEJOBS_TEST_REDIS_DATABASES', '')
    return tuple(tuple(int(db) for db in pair.split(':')) for pair in value.split(',') if pair)


def use_own_redis_databases():
    """
    Run in each test process before Django is set up (``process_setup``): the Redis databases of this process, by the
    number Django has just given it.
    """
    tasks, cache = redis_databases()[django_runner._worker_id - 1]
    os.environ['SAFEJOBS_REDIS_TASKS_DB'] = str(tasks)
    os.environ['SAFEJOBS_REDIS_CACHE_DB'] = str(cache)


def run_timed_subsuite(args):
    """Django's ``_run_subsuite``, and how long the class took, as one more event."""
    started = time.monotonic()
    index, events = django_runner._run_subsuite(args)
    return index, [*events, (TIME_EVENT, -1, time.monotonic() - started)]


def class_label(subsuite):
    test = next(iter(subsuite), None)
    return f'{type(test).__module__}.{type(test).__qualname__}' if test is not None else ''


class SafeJobsParallelTestSuite(django_runner.ParallelTestSuite):
    process_setup = use_own_redis_databases
    run_subsuite = run_timed_subsuite

    def __init__(self, subsuites, *args, **kwargs):
        self.times_file = Path(os.environ['SAFEJOBS_TEST_TIMES']) if os.environ.get('SAFEJOBS_TEST_TIMES') else None
        try:
            self.last_times = json.loads(self.times_file.read_text()) if self.times_file else {}
        except (OSError, ValueError):
            self.last_times = {}
        self.times = {}
        super().__init__(sorted(subsuites, key=self.expected_time, reverse=True), *args, **kwargs)

    def expected_time(self, subsuite):
        label = class_label(subsuite)
        if label in self.last_times:
            return self.last_times[label]
        test = next(iter(subsuite), None)
        # Never timed: those that commit for real (real workers, most of them) are the long ones.
        return 60.0 if isinstance(test, TransactionTestCase) and not isinstance(test, TestCase) else 1.0

    def handle_event(self, result, tests, event):
        if event[0] == TIME_EVENT:
            self.times[class_label(tests)] = round(event[2], 1)
            return
        super().handle_event(result, tests, event)

    def run(self, result):
        result = super().run(result)
        if self.times_file and self.times:
            self.times_file.write_text(json.dumps({**self.last_times, **self.times}, indent=1, sort_keys=True))
        return result


class SafeJobsTestRunner(django_runner.DiscoverRunner):
    parallel_test_suite = SafeJobsParallelTestSuite

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.parallel > 1 and not hasattr(django_runner.ParallelTestSuite, 'process_setup'):
            # A Django without the hook that gives each spawned process its Redis databases: one process.
            print(f'--parallel {self.parallel} needs a Django whose ParallelTestSuite has process_setup; running the '
                  'tests in one process', flush=True)
            self.parallel = 1

    def setup_test_environment(self, **kwargs):
        if self.parallel > 1:
            # Fresh processes read NetBox's configuration, and with it their own Redis databases; a forked one would
            # keep this process's.
            multiprocessing.set_start_method('spawn', force=True)
            if self.parallel > len(redis_databases()):
                raise ValueError(f'--parallel {self.parallel}: at most {len(redis_databases())} test processes, one '
                                 'per pair of Redis databases in SAFEJOBS_TEST_REDIS_DATABASES ("7:8,10:11"; '
                                 '`scripts/dev test` sets it)')
        super().setup_test_environment(**kwargs)

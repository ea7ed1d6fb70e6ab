"""
One PostgreSQL session per process: a work horse never uses the session of the worker it forked from, and the worker
never uses one a horse touched. Real fork, real workers, a horse killed inside its transaction. The private
PostgreSQL self-check (``scripts/dev selfcheck-private-pg``) runs this module again against a server with
``ssl = on``, where two processes on one session break its TLS stream.
"""

import os
import signal
import time

from core.models import Job
from django.db import DatabaseError, connection

from netbox_safejobs import sessions

from .base import EmptiedTransactionTestCase, SafeJobsTransactionTestCase, Worker, worker_env
from .jobs import HOLDING_KEY, SESSIONS_KEY, SessionJob

LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10, 'relay_interval': 0.5}


def backend_pid():
    with connection.cursor() as cursor:
        cursor.execute('SELECT pg_backend_pid()')
        return cursor.fetchone()[0]


def in_forked_child(test, func):
    """``func()`` in a forked child, which writes the text it returns to this process; the test fails if it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.write(write, func().encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        value = f.read()
    _, status = os.waitpid(pid, 0)
    test.assertEqual(os.waitstatus_to_exitcode(status), 0)
    return value


class ForkHookTest(EmptiedTransactionTestCase):

    def session_in_child(self):
        """The session a forked child queries in (its first query, through Django's connection)."""
        return int(in_forked_child(self, lambda: str(backend_pid())))

    def test_child_opens_its_own_session_and_leaves_the_parents(self):
        parent = backend_pid()
        self.addCleanup(sessions.install_fork_hook, enabled=False)
        # Without the hook, the child drives the parent's session: what RQ's work horses did before.
        sessions.install_fork_hook(enabled=False)
        self.assertEqual(self.session_in_child(), parent)
        # Two processes drove one session: over TLS its stream is now out of step for this process. Start afresh.
        try:
            connection.close()
        except DatabaseError:
            pass
        parent = backend_pid()
        sessions.install_fork_hook()
        child = self.session_in_child()
        self.assertNotEqual(child, parent)
        # The parent's session is untouched by the child's exit: same backend, usable.
        self.assertEqual(backend_pid(), parent)

    def test_run_in_own_session_leaves_this_thread_without_one(self):
        connection.close()
        theirs = sessions.run_in_own_session(backend_pid)
        self.assertIsNone(connection.connection, 'the calling thread got a session')
        self.assertNotEqual(backend_pid(), theirs)
        with self.assertRaises(ZeroDivisionError):
            sessions.run_in_own_session(lambda: 1 / 0)


class WarmUpTest(EmptiedTransactionTestCase):
    """
    What a worker works out once before it forks, its work horses do not work out again for every job: NetBox's check
    that ``core_objecttype`` exists (a ``pg_class`` scan in a fresh session) and the guard's statements. The worker's
    thread that forks keeps no session for it.
    """

    def child_queries(self):
        """In a forked child: the statements of NetBox's ``get_for_model(Job)``, and whether it had to build the
        guard's statements itself."""
        import json

        from core.models.object_types import ObjectType
        from django.test.utils import CaptureQueriesContext

        from netbox_safejobs import guard

        def in_child():
            with CaptureQueriesContext(connection) as queries:
                ObjectType.objects.get_for_model(Job)
            before = guard._statements.cache_info().misses
            guard._statements()
            return json.dumps({'sql': [q['sql'] for q in queries.captured_queries],
                               'built': guard._statements.cache_info().misses - before})

        return json.loads(in_forked_child(self, in_child))

    def test_work_horses_inherit_the_warm_up_and_no_session(self):
        from core.models.object_types import ObjectTypeManager

        from netbox_safejobs import guard, worker_loop

        self.addCleanup(setattr, ObjectTypeManager, '_table_exists', True)
        self.addCleanup(sessions.install_fork_hook, enabled=False)
        sessions.install_fork_hook()
        connection.close()
        # Without the warm-up (stock NetBox's worker): every child asks PostgreSQL's catalogue, and builds the
        # guard's statements.
        ObjectTypeManager._table_exists = False
        guard._statements.cache_clear()
        cold = self.child_queries()
        self.assertTrue(any('pg_class' in sql for sql in cold['sql']), cold['sql'])
        self.assertEqual(cold['built'], 1)
        # After it, done once in a session of its own that is closed again.
        ObjectTypeManager._table_exists = False
        guard._statements.cache_clear()
        sessions.run_in_own_session(worker_loop.warm, True)
        self.assertIsNone(connection.connection, 'the warm-up left the forking thread a session')
        warm = self.child_queries()
        self.assertFalse(any('pg_class' in sql for sql in warm['sql']), warm['sql'])
        self.assertEqual(len(warm['sql']), len(cold['sql']) - 1)
        self.assertEqual(warm['built'], 0)


class WorkHorseSessionTest(SafeJobsTransactionTestCase):
    """What a NetBox operator's worker does: a work horse killed (OOM, SIGKILL), then more jobs, then another kill."""

    def held_job(self, worker):
        job = SessionJob.enqueue(hold=120)
        self.wait_for(lambda: self.redis.lrange(HOLDING_KEY, 0, -1) == [str(job.job_id).encode()], timeout=90,
                      message='the job holding its transaction')
        self.redis.delete(HOLDING_KEY)
        horses = worker.children()
        self.assertTrue(horses)
        killed = time.monotonic()
        for pid in horses:
            os.kill(pid, signal.SIGKILL)
        self.wait_for(lambda: Job.objects.get(pk=job.pk).status == 'errored', timeout=30, message='job closed')
        self.assertLess(time.monotonic() - killed, 5)
        job.refresh_from_db()
        self.assertIn('work horse running this job died', job.error)
        from extras.models import Tag

        self.assertFalse(Tag.objects.filter(slug=f'held-{job.job_id}').exists(), 'a killed transaction committed')
        return job

    def test_every_work_horse_has_its_own_session(self):
        worker = Worker('default', burst=False, env=worker_env(LIVELY))
        self.addCleanup(worker.kill)
        self.held_job(worker)
        jobs = [SessionJob.enqueue() for _ in range(4)]
        self.wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status='completed').count() == 4,
                      timeout=60, message='4 jobs completed')
        self.held_job(worker)
        worker.kill(signal.SIGTERM)
        recorded = [entry.decode().split() for entry in self.redis.lrange(SESSIONS_KEY, 0, -1)]
        seen = [int(pid) for pid, _ in recorded]
        self.assertEqual(len(seen), 6, seen)
        self.assertEqual(len(set(seen[1:5])), 4, f'work horses shared a session: {seen}')
        if os.environ.get('SAFEJOBS_EXPECT_TLS') == '1':
            # Run by `scripts/dev selfcheck-private-pg` against its private server with ssl = on.
            self.assertEqual({tls for _, tls in recorded}, {'tls'}, recorded)
        for text in ("can't change 'autocommit'", 'not closed now', 'SSL', 'lost synchronization'):
            self.assertNotIn(text, worker.output)

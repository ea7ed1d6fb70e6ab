"""
Race and fault harness: what stock NetBox loses and what netbox-safejobs keeps, on real PostgreSQL, a real Redis
server and real ``netbox rqworker`` processes, both measured in the same invocation.

    scripts/dev bench harness                     # the full run (10,000-job race, every fault, cost, chart)
    scripts/dev bench harness --short             # a few hundred jobs, each fault once
    scripts/dev bench harness --scenarios race,duplicate_push --jobs 2000 --workers 2

*Stock* is NetBox with the plugin installed and every switch off (``dispatch_on_commit``, ``worker_guard``,
``worker_loop``, ``stuck_job_detection``): NetBox's own code paths, in the harness and in its workers.
No scenario runs a recovery pass by hand or moves a clock: delivery and liveness are what the plugin's workers do on
their own, with the default settings.
*Plugin* is the plugin with its defaults, except where a scenario says otherwise (printed with the results).

The harness uses the development database and a private Redis server it starts on a free port (and stops and
restarts in the outage scenario); it removes its jobs afterwards. In the lost_claim_reply scenario the workers reach
PostgreSQL through a TCP proxy of the harness that drops one reply per job (``ReplyCutter``); in pg_blip and
pg_outage through one that cuts every connection for a while (``DatabaseGate``).
It exits with status 1 when a plugin guarantee is broken: a job lost, a ghost row, a resurrected row, a duplicate
run or an exception in a caller.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from netbox_safejobs.testing.fixtures import netbox_command, push_directly, second_connection, set_mode
from netbox_safejobs.testing.processes import RedisServer, stop_process_group

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')

ROOT = Path(__file__).resolve().parent.parent

STOCK_CONFIG = {
    'dispatch_on_commit': False, 'worker_guard': False, 'worker_loop': False, 'stuck_job_detection': False,
}
# The plugin's workers look for a missing row for 0.1 + 0.1 + 0.2 + 0.3 + 0.5 = 1.2 s instead of 6 s, so that the
# scenario that deletes rows in bulk does not spend minutes waiting. The same base delay also paces reconnections to
# the database: 12 of them (at most 2 s apart, 13.3 s in all) keep the default's budget (8, 11.5 s). Everything else
# is the default.
PLUGIN_CONFIG = {'lookup_base_delay': 0.1, 'database_retries': 12}
MODES = ('stock', 'plugin')
# Name -> scenario, filled by @scenario; a full run takes them in the order they are defined.
SCENARIOS = {}
QUEUES = ('high', 'default', 'low')
# Seconds Redis stays down in each outage of the redis_outages scenario.
OUTAGES = (1, 3, 5, 7, 10)

# Guarantees the plugin must keep in every scenario (the exit status depends on them).
GUARANTEES = ('lost', 'ghost_rows', 'resurrected', 'duplicate_runs', 'caller_exceptions', 'callers_broken',
              'shared_sessions', 'killed_transactions_committed', 'live_jobs_closed', 'extra_next_runs',
              'requests_failed', 'webhooks_lost', 'webhooks_twice', 'webhooks_rolled_back_sent', 'runs_lost',
              'unwatched', 'extra_future_runs', 'chains_broken', 'chain_rows_left_running')


# --------------------------------------------------------------------------------------------------------------------
# Processes: a private Redis server, rqworker pools
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Context:
    redis: RedisServer
    workdir: Path
    workers: int
    db_name: str
    redis_db: int
    log: list = field(default_factory=list)
    # (mode, exit code, last line of the worker's log) of every worker that exited on its own and was restarted.
    restarts: list = field(default_factory=list)

    def env(self, mode, runs_file=None, extra_config=None, db_port=None):
        env = dict(os.environ)
        if db_port is not None:
            env.update(self.database_through(db_port))
        config = dict(STOCK_CONFIG if mode == 'stock' else PLUGIN_CONFIG)
        config.update(extra_config or {})
        env.update({
            'SAFEJOBS_PLUGINS_CONFIG': repr(config),
            'SAFEJOBS_REDIS_PORT': str(self.redis.port),
            'SAFEJOBS_REDIS_TASKS_DB': str(self.redis_db),
            'SAFEJOBS_DB_NAME': self.db_name,
            'SAFEJOBS_DEBUG': '0',
            'SAFEJOBS_CONN_MAX_AGE': '0',
            'SAFEJOBS_LOG_LEVEL': 'WARNING',
            'PYTHONPATH': os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
        })
        if runs_file:
            env['SAFEJOBS_HARNESS_RUNS'] = str(runs_file)
        if db_port is not None:
            env['PYTHONPATH'] = os.pathsep.join([str(self.workdir / 'conf'), env['PYTHONPATH']])
        return env

    def database_through(self, port):
        """
        Environment for a NetBox process whose database connections go to 127.0.0.1:``port`` (a proxy of the harness)
        without SSL: NetBox's configuration, whatever file it is, with only the database's HOST, PORT and sslmode
        replaced (the development configuration takes neither from the environment).
        """
        from netbox import settings

        (self.workdir / 'conf').mkdir(exist_ok=True)
        (self.workdir / 'conf' / f'{PROXIED_CONFIGURATION}.py').write_text(PROXIED_CONFIGURATION_TEXT)
        return {
            'NETBOX_CONFIGURATION': PROXIED_CONFIGURATION,
            'SAFEJOBS_HARNESS_CONFIGURATION': settings.configuration.__file__,
            'SAFEJOBS_HARNESS_DB_PORT': str(port),
        }


PROXIED_CONFIGURATION = 'safejobs_harness_configuration'
PROXIED_CONFIGURATION_TEXT = """\
# Written by benchmarks/harness.py: the configuration in SAFEJOBS_HARNESS_CONFIGURATION, its database reached
# through the harness's proxy on SAFEJOBS_HARNESS_DB_PORT, without SSL.
import os
import runpy

globals().update({
    name: value for name, value in runpy.run_path(os.environ['SAFEJOBS_HARNESS_CONFIGURATION']).items()
    if not name.startswith('__')
})
_database = DATABASES['default'] if 'DATABASES' in globals() else DATABASE  # noqa: F821
_database.update(HOST='127.0.0.1', PORT=int(os.environ['SAFEJOBS_HARNESS_DB_PORT']))
_database['OPTIONS'] = {**_database.get('OPTIONS', {}), 'sslmode': 'disable'}
"""


class WorkerPool:
    """
    ``count`` rqworker processes. A long-running pool is supervised as a service manager would (systemd's
    ``Restart=always``): RQ stops a worker, with exit status 0, on an exception outside its Redis retry loop, for
    instance when Redis goes away while the worker runs a job (``set_state`` after the job raises), and a worker
    that exits on its own is started again after ``RESTART_DELAY`` seconds. Every restart is counted in the results,
    for stock NetBox and the plugin alike (see docs/troubleshooting.md: NetBox's own unit, ``Restart=on-failure``,
    does not restart such a worker). Burst pools exit when the queues are empty and are not restarted.
    """

    RESTART_DELAY = 1.0

    def __init__(self, ctx, mode, runs_file, count=None, extra_config=None, burst=False, db_port=None, env=None):
        self.ctx, self.mode = ctx, mode
        self.processes, self.logs = [], []
        self._registered = set()  # pids of this pool's workers seen registered with Redis
        self.argv = netbox_command('rqworker', *QUEUES) + (['--burst'] if burst else [])
        self.env = env or ctx.env(mode, runs_file, extra_config, db_port=db_port)
        logs = ctx.workdir / 'logs'
        logs.mkdir(exist_ok=True)
        for i in range(count or ctx.workers):
            self.logs.append(logs / f'{mode}-worker-{len(ctx.log)}-{i}.log')
            self.processes.append(self._start(i))
        ctx.log.append(mode)
        self._stopping = threading.Event()
        self._supervisor = None
        if not burst:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True)
            self._supervisor.start()

    def _start(self, i):
        with open(self.logs[i], 'ab') as log:
            return subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def _log_tail(self, i, count=60):
        """The end of a worker's log, from its last traceback if there is one."""
        try:
            lines = self.logs[i].read_bytes().decode(errors='replace').strip().splitlines()
        except OSError:
            return []
        starts = [n for n, line in enumerate(lines) if 'unhandled exception' in line or line.startswith('Traceback')]
        return lines[starts[-1] if starts else 0:][-count:]

    def _supervise(self):
        while not self._stopping.wait(0.5):
            for i, process in enumerate(self.processes):
                if process.poll() is None:
                    continue
                if self._stopping.wait(self.RESTART_DELAY):
                    return
                tail = self._log_tail(i)
                self.ctx.restarts.append((self.mode, process.returncode, (tail or [''])[-1][:200]))
                print(f'worker {process.pid} ({self.mode}) exited with status {process.returncode}; restarted. '
                      f'End of its log:\n    ' + '\n    '.join(tail), flush=True)
                self.processes[i] = self._start(i)

    def ready(self):
        """
        Whether every worker process of the pool has been seen registered with Redis (it was then listening). A
        worker stays "seen" when Redis loses its registration (the outage scenario restarts Redis empty, and RQ
        does not register again); a restarted worker is a new process, not ready until it registers.
        """
        from django_rq import get_connection
        from redis.exceptions import RedisError
        from rq.worker import Worker

        try:
            self._registered.update(int(w.pid) for w in Worker.all(connection=get_connection('default')) if w.pid)
        except RedisError:
            pass
        return all(p.pid in self._registered for p in self.processes)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError('rqworker processes did not come up')

    def stop(self):
        self._stopping.set()
        if self._supervisor:
            self._supervisor.join()
        stop_process_group(self.processes)

    def wait(self, timeout=600):
        for p in self.processes:
            p.wait(timeout=timeout)


# PostgreSQL wire protocol: the request codes of the untyped first packets, and where a statement's text is.
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
# A statement that moves a job to running: the plugin's claim (``UPDATE core_job SET status = 'running' ...`` in its
# CTE) and stock NetBox's ``Job.start()`` (a full-row ``UPDATE "core_job" SET ... "status" = 'running' ...``).
# Django's psycopg backend binds parameters on the client side by default, so the values are in the statement text.
START_STATEMENT = re.compile(rb'UPDATE\s+"?core_job"?\s+SET\s.*?"?status"?\s*=\s*\'running\'', re.DOTALL)
# psycopg renders a UUID as 32 hex digits (``'f883...3804'::uuid``); the dashed form is accepted too.
UUID_LITERAL = re.compile(rb"'([0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})'")


def _recv_exact(sock, count):
    data = b''
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class LoopbackProxy:
    """
    A TCP proxy on a free loopback port in front of ``upstream`` (host, port); what crosses it is the subclass's
    ``_accept()``. ``stop()`` closes the port and every connection through it.
    """

    def __init__(self, upstream):
        self.upstream = upstream
        self.port = None
        self.lock = threading.Lock()
        self._listener = None
        self._sockets = []
        self._stopping = threading.Event()

    def start(self):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self._stopping.set()
        self._listener.close()
        self._cut_all()

    def _cut_all(self):
        with self.lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            self._close(sock)

    @staticmethod
    def _close(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self):
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._admit():
                self._close(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self._sockets += [client, server]
            self._serve(client, server)

    def _admit(self):
        """Whether a new connection is let through (else it is closed at once)."""
        return True

    def _serve(self, client, server):
        """Start whatever forwards the bytes of one connection both ways."""
        raise NotImplementedError


class ReplyCutter(LoopbackProxy):
    """
    A TCP proxy between rqworker processes and PostgreSQL that forwards every byte both ways, except that for the
    first statement moving each of ``targets`` (job UUIDs) to running, it lets the server execute and commit it, reads
    the server's whole reply, and then closes the client's connection instead of forwarding the reply: the worker's
    connection dies after the commit and before the reply, as when a network path or a pooler fails at that instant.

    It answers an SSL or GSSAPI encryption request with 'N' itself, so that it sees the protocol in clear whatever
    ``sslmode`` the client asks for. Statements are found in simple-protocol Query and extended-protocol Parse
    messages. A reply is cut only when the server says the statement succeeded and no transaction is open
    (ReadyForQuery status 'I', no ErrorResponse): the statement committed. The job UUID is looked for in the statement
    text, where Django's default client-side binding puts it; with ``server_side_binding`` the values travel in Bind
    messages, nothing is cut, and the scenario says so (``replies_cut`` 0).
    """

    def __init__(self, upstream, targets, pattern=START_STATEMENT):
        super().__init__(upstream)
        self.targets = {uuid.UUID(str(u)) for u in targets}
        self.pattern = pattern
        self.cut = {}  # job UUID -> the start of the statement whose reply was lost
        self.connections = 0

    def _serve(self, client, server):
        with self.lock:
            self.connections += 1
        state = {'armed': None}
        threading.Thread(target=self._client_to_server, args=(client, server, state), daemon=True).start()
        threading.Thread(target=self._server_to_client, args=(server, client, state), daemon=True).start()

    def _arm(self, state, text):
        if not self.pattern.search(text):
            return
        with self.lock:
            for found in map(uuid.UUID, (literal.decode() for literal in UUID_LITERAL.findall(text))):
                if found in self.targets and found not in self.cut:
                    state['armed'] = (found, text[:60].decode(errors='replace'))
                    return

    def _client_to_server(self, client, server, state):
        try:
            # Untyped packets first: encryption requests (answered here), then the startup or cancel packet.
            while True:
                head = _recv_exact(client, 8)
                if head is None:
                    return
                length, code = struct.unpack('!ii', head)
                rest = _recv_exact(client, length - 8) if length > 8 else b''
                if rest is None:
                    return
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    client.sendall(b'N')
                    continue
                server.sendall(head + rest)
                if code == CANCEL_REQUEST:
                    return
                break
            while True:
                head = _recv_exact(client, 5)
                if head is None:
                    return
                kind, length = head[:1], struct.unpack('!i', head[1:])[0]
                body = _recv_exact(client, length - 4)
                if body is None:
                    return
                if kind == b'Q':
                    self._arm(state, body[:-1])
                elif kind == b'P':
                    self._arm(state, body[body.index(b'\0') + 1:].split(b'\0', 1)[0])
                server.sendall(head + body)
        except OSError:
            pass
        finally:
            self._close(client)
            self._close(server)

    def _server_to_client(self, server, client, state):
        held = []
        try:
            while True:
                head = _recv_exact(server, 5)
                if head is None:
                    return
                body = _recv_exact(server, struct.unpack('!i', head[1:])[0] - 4)
                if body is None:
                    return
                if state['armed'] is None:
                    client.sendall(head + body)
                    continue
                held.append(head + body)
                if head[:1] != b'Z':
                    continue
                failed = any(message[:1] == b'E' for message in held)
                if body[:1] == b'I' and not failed:
                    with self.lock:
                        self.cut[state['armed'][0]] = state['armed'][1]
                    return  # the reply is dropped; finally closes both connections
                if failed:
                    state['armed'] = None
                client.sendall(b''.join(held))
                held = []
        except OSError:
            pass
        finally:
            self._close(client)
            self._close(server)


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------

class DatabaseGate(LoopbackProxy):
    """
    A TCP proxy between rqworker processes and PostgreSQL that can go down: ``down()`` cuts every connection through
    it and refuses new ones (accepted, then closed at once) until ``up()``, which is what the workers see of a
    PostgreSQL restart, a failover or a network partition. The harness keeps its own direct connection. Unlike a real
    restart, the server's start time does not change: the workers' loops must tell the outage by themselves.
    """

    def __init__(self, upstream):
        super().__init__(upstream)
        self.is_down = False

    def down(self):
        with self.lock:
            self.is_down = True
        self._cut_all()

    def up(self):
        with self.lock:
            self.is_down = False

    def _admit(self):
        return not self.is_down

    def _serve(self, client, server):
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            LoopbackProxy._close(sock)


def read_runs(runs_file, pids=None):
    """Runs per job and the time of each job's first run (and, into ``pids``, the process that ran it)."""
    runs = Counter()
    starts = {}
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            job_uuid, at, pid = line.split()
            runs[uuid.UUID(job_uuid)] += 1
            starts.setdefault(uuid.UUID(job_uuid), float(at))
            if pids is not None:
                pids[uuid.UUID(job_uuid)] = int(pid)
    return runs, starts


def wait_running(runs_file, job_uuids, timeout=120):
    """Wait until every job is inside run(); {job UUID: pid of the work horse running it} (the runs file says)."""
    pids = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(pids) < len(job_uuids):
        read_runs(runs_file, pids)
        time.sleep(0.2)
    return pids


def rq_failures():
    """RQ failed-registry entries by exception type, over the harness's queues."""
    from django_rq import get_queue
    from rq.registry import FailedJobRegistry

    by_type = Counter()
    for name in QUEUES:
        queue = get_queue(name)
        registry = FailedJobRegistry(queue=queue)
        for rq_job in queue.job_class.fetch_many(registry.get_job_ids(), connection=queue.connection):
            if rq_job is None:
                continue
            exc = (rq_job.exc_info or '').strip().splitlines()
            by_type[exc[-1].split(':')[0] if exc else 'unknown'] += 1
    return dict(by_type)


def wait_until_settled(job_uuids, timeout, idle=20, terminal_only=True, pool=None):
    """
    Wait until every job is completed/errored/failed, or nothing changed for ``idle`` seconds while every worker of
    ``pool`` was up (a worker still starting, after a restart or on a loaded machine, is not "nothing happening").
    """
    from core.models import Job

    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        done = Job.objects.filter(job_id__in=job_uuids, status__in=('completed', 'errored', 'failed')).count()
        if done >= len(job_uuids):
            return True
        if done != last or (pool is not None and not pool.ready()):
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > idle:
            return False
        time.sleep(0.5)
    return False


def wait_tasks_ended(job_uuids, timeout):
    """
    Wait until the RQ task of every job has ended (finished, failed, stopped or canceled) or is gone from Redis: once
    it has, stock NetBox never changes the job's row again, so there is nothing more to wait for.
    """
    from django_rq import get_queue
    from rq.job import JobStatus

    queue = get_queue('default')
    ended = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = queue.job_class.fetch_many([str(u) for u in job_uuids], connection=queue.connection)
        if all(task is None or task.get_status(refresh=False) in ended for task in tasks):
            return True
        time.sleep(0.5)
    return False


def collect(committed, rolled_back, runs_file, deleted=(), caller_exceptions=None, extra=None):
    """The outcome of a scenario from the database, Redis and the runs file."""
    from core.models import Job

    committed, rolled_back, deleted = set(committed), set(rolled_back), set(deleted)
    rows = dict(Job.objects.filter(job_id__in=committed | rolled_back | deleted).values_list('job_id', 'status'))
    runs, _ = read_runs(runs_file)
    statuses = Counter(rows[u] for u in committed - deleted if u in rows)
    result = {
        'jobs': len(committed) + len(rolled_back),
        'committed': len(committed),
        'rolled_back': len(rolled_back),
        'completed': statuses['completed'],
        'errored': statuses['errored'] + statuses['failed'],
        'left_pending': statuses['pending'] + statuses['scheduled'],
        'left_running': statuses['running'],
        # A job lost: committed, still there, and never going to run or finish.
        'lost': statuses['pending'] + statuses['scheduled'] + statuses['running'],
        'ghost_rows': len(rolled_back & set(rows)),
        'resurrected': len(deleted & set(rows)),
        'runs': sum(runs.values()),
        'duplicate_runs': sum(1 for u, c in runs.items() if c > 1),
        'rq_failed': rq_failures(),
        'caller_exceptions': sum((caller_exceptions or Counter()).values()),
        'caller_exception_types': dict(caller_exceptions or {}),
    }
    result.update(extra or {})
    return result


def percentile(values, q):
    """The ``q`` quantile (0.5, 0.99), interpolated between the nearest values; ``None`` without values."""
    values = list(values)
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method='inclusive')[round(q * 100) - 1]


def cleanup():
    from core.models import Job
    from django_rq import get_connection
    from extras.models import Tag

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import JobDispatch, RetryEvent

    uuids = list(Job.objects.filter(name=HarnessJob.name).values_list('job_id', flat=True))
    RetryEvent.objects.filter(job_name=HarnessJob.name).delete()
    JobDispatch.objects.filter(job__name=HarnessJob.name).delete()
    Job.objects.filter(name=HarnessJob.name).delete()
    Tag.objects.filter(slug__startswith=HARNESS_TAG).delete()
    get_connection('default').flushdb()
    return len(uuids)


def enqueue_many(count, threads=8, hold=0.0, rollback=None, rate=None, until=None):
    """
    Enqueue ``count`` HarnessJobs (or as many as fit before the monotonic time ``until``), each in its own
    transaction held open ``hold`` seconds after the enqueue; ``rollback(i)`` says which to roll back.
    Returns (committed, rolled_back, exceptions, commit_times).
    """
    from django.db import connection, transaction

    from benchmarks.runners import HarnessJob

    committed, rolled_back, commit_times, exceptions = [], [], {}, Counter()
    lock = threading.Lock()

    class Rollback(Exception):
        pass

    def one(i):
        job_uuid = None
        try:
            with transaction.atomic():
                job = HarnessJob.enqueue()
                job_uuid = job.job_id
                if hold:
                    time.sleep(hold)
                if rollback and rollback(i):
                    raise Rollback
            with lock:
                committed.append(job_uuid)
                commit_times[job_uuid] = time.time()
        except Rollback:
            with lock:
                rolled_back.append(job_uuid)
        except Exception as e:
            with lock:
                exceptions[type(e).__name__] += 1
                if job_uuid is not None:
                    # Raised after COMMIT (an on-commit push failing): the row is committed all the same.
                    committed.append(job_uuid)
        finally:
            if rate:
                time.sleep(rate)

    def worker(indices):
        try:
            for i in indices:
                if until is not None and time.monotonic() >= until:
                    break
                one(i)
        finally:
            connection.close()

    total = count if count is not None else 10**9
    chunks = [range(t, total, threads) for t in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, chunks))
    return committed, rolled_back, exceptions, commit_times


# --------------------------------------------------------------------------------------------------------------------
# Scenarios: each runs once per mode and returns the outcome
# --------------------------------------------------------------------------------------------------------------------

def scenario(function):
    """
    Register ``function(ctx, mode, opts, runs_file)`` (which returns the outcome as a dict) as the scenario named
    after it, without the ``scenario_`` prefix: ``--scenarios`` accepts it and a full run includes it.
    """
    SCENARIOS[function.__name__.removeprefix('scenario_')] = function
    return function


@scenario
def scenario_race(ctx, mode, opts, runs_file):
    """N jobs, each enqueued in a transaction held open ``hold`` s, a share rolled back, K workers racing."""
    rng = random.Random(42)
    plan = [rng.random() < opts.rollback_share for _ in range(opts.jobs)]
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        pool.wait_ready()  # the workers must be listening, so that they race the enqueues
        committed, rolled_back, exceptions, commit_times = enqueue_many(
            opts.jobs, threads=opts.threads, hold=opts.hold, rollback=lambda i: plan[i],
        )
        wait_until_settled(committed, timeout=opts.timeout, pool=pool)
        time.sleep(1)
    finally:
        pool.stop()
    return collect(committed, rolled_back, runs_file, caller_exceptions=exceptions)


@scenario
def scenario_redis_outage(ctx, mode, opts, runs_file):
    """Redis stopped during a burst of enqueues, then started again, empty (no persistence)."""
    pool = WorkerPool(ctx, mode, runs_file)
    back_at = {}
    up, down = opts.outage_seconds, opts.outage_seconds

    def outage():
        time.sleep(up)
        ctx.redis.stop()
        time.sleep(down)
        ctx.redis.start()
        back_at['t'] = time.time()

    try:
        pool.wait_ready()
        timer = threading.Thread(target=outage)
        timer.start()
        deadline = time.monotonic() + up + down + up
        committed, _, exceptions, _ = enqueue_many(None, threads=1, rate=0.01, until=deadline)
        timer.join()
        settled = wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
        all_ran_after = None
        if settled:
            _, starts = read_runs(runs_file)
            all_ran_after = round(max(starts.get(u, 0) for u in committed) - back_at['t'], 2)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, caller_exceptions=exceptions,
                   extra={'all_ran_s_after_redis_back': all_ran_after, 'outage_s': down})


def _outage(ctx, seconds, enqueue):
    """Stop Redis, run ``enqueue()`` while it is down, keep it down ``seconds`` in all, start it (empty)."""
    ctx.redis.stop()
    started = time.monotonic()
    result = enqueue()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    ctx.redis.start()
    return result, time.time()


@scenario
def scenario_redis_outages(ctx, mode, opts, runs_file):
    """
    Five Redis outages of 1 to 10 s, jobs enqueued during each, Redis back empty each time, workers running and never
    restarted by hand: the time from Redis answering again to every job of that outage having run.
    """
    per_outage = max(1, opts.outage_jobs // len(OUTAGES))
    pool = WorkerPool(ctx, mode, runs_file)
    committed, exceptions, latencies = [], Counter(), []
    try:
        pool.wait_ready()
        for seconds in OUTAGES:
            (jobs, _, errors, _), back = _outage(ctx, seconds, lambda: enqueue_many(per_outage, threads=1))
            committed += jobs
            exceptions.update(errors)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                _, starts = read_runs(runs_file)
                if all(u in starts for u in jobs):
                    latencies.append(max(starts[u] for u in jobs) - back)
                    break
                time.sleep(0.02)
        wait_until_settled(committed, timeout=60, idle=10, pool=pool)
    finally:
        pool.stop()
    complete = len(latencies) == len(OUTAGES)
    return collect(committed, [], runs_file, caller_exceptions=exceptions, extra={
        'outages': ', '.join(f'{s}' for s in OUTAGES),
        'ran_s_after_redis_back_p50': round(percentile(latencies, .5), 2) if complete else None,
        'ran_s_after_redis_back_max': round(max(latencies), 2) if complete else None,
    })


@scenario
def scenario_redis_flushed(ctx, mode, opts, runs_file):
    """
    Redis loses its data without an outage (FLUSHALL, a failover to an empty replica) while every worker runs a slow
    job and other jobs wait in the queue: the waiting ones must be sent again, the running ones finish once and are
    not closed.
    """
    from django_rq import get_connection

    from benchmarks.runners import HarnessJob

    slow = [HarnessJob.enqueue(sleep=6).job_id for _ in range(ctx.workers)]
    pool = WorkerPool(ctx, mode, runs_file, count=ctx.workers)
    try:
        pool.wait_ready()
        wait_running(runs_file, slow)
        waiting, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)  # queued behind the slow jobs
        get_connection('default').flushall()
        flushed = time.time()
        settled = wait_until_settled(waiting + slow, timeout=opts.timeout, idle=20, pool=pool)
        after = None
        if settled:
            _, starts = read_runs(runs_file)
            after = round(max(starts.get(u, 0) for u in waiting) - flushed, 2)
    finally:
        pool.stop()
    return collect(waiting + slow, [], runs_file, extra={'all_ran_s_after_flush': after})


CRASH_SCRIPT = """
import os, signal
from django.db import transaction
from benchmarks.runners import HarnessJob
with transaction.atomic():
    # Runs first after COMMIT: the process dies before any push.
    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    job = HarnessJob.enqueue()
    print(job.job_id, flush=True)
"""


@scenario
def scenario_crash_after_commit(ctx, mode, opts, runs_file):
    """Processes SIGKILLed between COMMIT and the push to Redis; the workers' relay owes them after 10 s."""
    procs = [
        subprocess.Popen(netbox_command('shell', '--command', CRASH_SCRIPT),
                         env=ctx.env(mode), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(opts.crashes)
    ]
    committed = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        committed += [uuid.UUID(line) for line in out.split() if len(line) == 36]
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=20, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file)


@scenario
def scenario_deleted_rows(ctx, mode, opts, runs_file):
    """Job rows deleted (as housekeeping does, a queryset delete) after the push, before a worker takes the task."""
    from core.models import Job
    from django_rq import get_queue

    committed, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
    Job.objects.filter(job_id__in=committed).delete()
    pool = WorkerPool(ctx, mode, runs_file, burst=True)
    pool.wait(timeout=opts.timeout)
    return collect([], [], runs_file, deleted=committed, extra={
        'deleted': len(committed), 'left_in_queue': get_queue('default').count,
    })


@scenario
def scenario_deleted_mid_run(ctx, mode, opts, runs_file):
    """Periodic jobs whose rows are deleted (a queryset delete) while they run."""
    from core.models import Job

    from benchmarks.runners import HarnessJob

    jobs = [HarnessJob.enqueue(sleep=3, interval=60).job_id for _ in range(ctx.workers)]
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _, starts = read_runs(runs_file)
            if all(u in starts for u in jobs):
                break
            time.sleep(0.05)
        Job.objects.filter(job_id__in=jobs).delete()
        time.sleep(6)
    finally:
        pool.stop()
    successors = Job.objects.filter(name=HarnessJob.name, interval=60).exclude(job_id__in=jobs).count()
    return collect([], [], runs_file, deleted=jobs, extra={'deleted': len(jobs), 'next_runs_of_deleted': successors})


@scenario
def scenario_worker_killed(ctx, mode, opts, runs_file):
    """The work horses SIGKILLed mid-job (what the OOM killer does); their workers live on."""
    from core.models import Job
    from django.db import transaction

    from benchmarks.runners import HarnessJob

    committed = []
    for _ in range(ctx.workers):
        with transaction.atomic():
            committed.append(HarnessJob.enqueue(sleep=30).job_id)
    pool = WorkerPool(ctx, mode, runs_file)
    killed = 0
    try:
        pids = wait_running(runs_file, committed)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed += 1
        killed_at = time.monotonic()
        closed_after = None
        while time.monotonic() - killed_at < 30:
            if not Job.objects.filter(job_id__in=committed, status='running').exists():
                closed_after = round(time.monotonic() - killed_at, 2)
                break
            time.sleep(0.1)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, extra={'killed': killed, 'closed_s_after_kill': closed_after})


@scenario
def scenario_stop(ctx, mode, opts, runs_file):
    """
    An operator stops jobs that run for a long time. Stock NetBox has only the delete of a running job, which cancels
    its RQ task while its work horse runs on (NetBox #23138); the plugin stops it (``stopping.request_stop``).
    Measured: seconds from the request to the end of each work horse.
    """
    from core.models import Job

    from benchmarks.runners import HarnessJob
    from netbox_safejobs import liveness, stopping

    run_for = 20
    jobs = [HarnessJob.enqueue(sleep=run_for).job_id for _ in range(ctx.workers)]
    pool = WorkerPool(ctx, mode, runs_file)
    ended = {}
    try:
        horses = wait_running(runs_file, jobs)
        asked = time.monotonic()
        for job in Job.objects.filter(job_id__in=jobs):
            if mode == 'stock':
                job.delete()
            else:
                stopping.request_stop(job)
        while len(ended) < len(horses) and time.monotonic() - asked < run_for + 10:
            for job_uuid, pid in horses.items():
                if job_uuid not in ended and not liveness.pid_alive(pid):
                    ended[job_uuid] = time.monotonic() - asked
            time.sleep(0.01)
        time.sleep(2)
    finally:
        pool.stop()
    after = sorted(ended.values())
    return collect([] if mode == 'stock' else jobs, [], runs_file, deleted=jobs if mode == 'stock' else (), extra={
        'stopped': len(jobs),
        'horse_ended_s_max': round(after[-1], 2) if len(after) == len(horses) else None,
        'horse_ended_s_p50': round(percentile(after, 0.5) if len(after) > 1 else after[0], 2) if after else None,
        'horses_ran_on': sum(1 for s in after if s > 2.0) + len(horses) - len(after),
    })


@scenario
def scenario_worker_sigkill(ctx, mode, opts, runs_file):
    """Whole workers SIGKILLed with their work horses mid-job (a host lost); another worker is started."""
    from core.models import Job
    from django.db import transaction

    from benchmarks.runners import HarnessJob

    committed = []
    for _ in range(ctx.workers):
        with transaction.atomic():
            committed.append(HarnessJob.enqueue(sleep=60).job_id)
    pool = WorkerPool(ctx, mode, runs_file)
    pids = {}
    try:
        pids = wait_running(runs_file, committed)
    finally:
        pool._stopping.set()
        for p in pool.processes:
            os.kill(p.pid, signal.SIGKILL)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        for p in pool.processes:
            p.wait()
    killed_at = time.monotonic()
    survivor = WorkerPool(ctx, mode, runs_file, count=1)
    closed_after = None
    try:
        while time.monotonic() - killed_at < 240:
            if not Job.objects.filter(job_id__in=committed, status='running').exists():
                closed_after = round(time.monotonic() - killed_at, 1)
                break
            time.sleep(0.5)
    finally:
        survivor.stop()
    return collect(committed, [], runs_file, extra={'killed': len(pids), 'closed_s_after_kill': closed_after})


@scenario
def scenario_db_terminated(ctx, mode, opts, runs_file):
    """Database connections of the workers terminated (pg_terminate_backend) every 0.5 s while they take jobs."""
    from django.db import connection

    committed, _, _, _ = enqueue_many(opts.fault_jobs * 2, threads=2)
    settings = connection.settings_dict
    stop = threading.Event()
    terminated = [0]
    connection.ensure_connection()
    # Only the workers' connections: not this process's own, nor the terminator's.
    spared = [connection.connection.info.backend_pid]

    def terminator():
        with second_connection(connection) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid() AND backend_type = 'client backend' AND pid <> ALL(%s)",
                    [settings['NAME'], spared],
                ).fetchall()
                terminated[0] += len(rows)
                stop.wait(0.5)

    pool = WorkerPool(ctx, mode, runs_file)
    # Not during start-up: a worker whose connection is terminated while it schedules the system jobs exits (any
    # NetBox version), which is not the failure this scenario is about.
    pool.wait_ready()
    thread = threading.Thread(target=terminator)
    thread.start()
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        stop.set()
        thread.join()
    try:
        # What the workers' own loops do next: close the jobs of work horses that died with their connection.
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, extra={'connections_terminated': terminated[0]})


@scenario
def scenario_duplicate_push(ctx, mode, opts, runs_file):
    """Every task pushed twice (a requeue, a recovery racing a slow push)."""
    from core.models import Job

    from benchmarks.runners import HarnessJob

    committed, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
    for job in Job.objects.filter(job_id__in=committed):
        push_directly(job, HarnessJob, rq_job_id=str(uuid.uuid4()))
    pool = WorkerPool(ctx, mode, runs_file, burst=True)
    pool.wait(timeout=opts.timeout)
    return collect(committed, [], runs_file)


@scenario
def scenario_concurrent_relays(ctx, mode, opts, runs_file):
    """
    ``opts.owed`` pushes owed (Redis was down at their commit), then 8 relay passes in 8 processes at once: each task
    must reach Redis once (plugin only: stock NetBox has no stored push to send).
    """
    from django_rq import get_queue

    from netbox_safejobs.models import RetryEvent

    if mode == 'stock':
        return {'skipped': 'no stored pushes in stock NetBox'}
    (committed, _, errors, _), _ = _outage(ctx, 0, lambda: enqueue_many(opts.owed, threads=4))
    procs = [subprocess.Popen(netbox_command('safejobs_recover'), env=ctx.env(mode), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(8)]
    for p in procs:
        p.wait(timeout=opts.timeout)
    queued = Counter()
    for name in QUEUES:
        queued.update(get_queue(name).get_job_ids())
    double = sum(1 for count in queued.values() if count > 1)
    missing = len({str(u) for u in committed} - set(queued))
    return {
        'owed_pushes': len(committed), 'relays': len(procs), 'pushed': sum(queued.values()),
        'double_sends': double, 'not_sent': missing,
        'duplicate_skipped': RetryEvent.objects.filter(kind='duplicate_skipped').count(),
        'caller_exceptions': sum(errors.values()), 'lost': missing, 'duplicate_runs': double,
    }


@scenario
def scenario_lost_claim_reply(ctx, mode, opts, runs_file):
    """
    A worker's database connection lost after the server committed the statement that starts a job (the plugin's
    claim, stock NetBox's ``Job.start()``) and before its reply reached the worker, once for every job: a proxy between
    the workers and PostgreSQL lets the statement commit, then closes the worker's connection instead of answering.
    """
    from django.db import connection

    from netbox_safejobs.models import JobDispatch, RetryEvent

    committed, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
    settings = connection.settings_dict
    proxy = ReplyCutter((settings['HOST'] or '127.0.0.1', int(settings['PORT'] or 5432)), committed).start()
    pool = WorkerPool(ctx, mode, runs_file, db_port=proxy.port)
    try:
        wait_tasks_ended(committed, timeout=opts.timeout)
        # Then whatever the workers' own loops still do about the rows (the plugin's liveness check, if anything).
        wait_until_settled(committed, timeout=opts.timeout, idle=5, pool=pool)
    finally:
        pool.stop()
        proxy.stop()
    events = Counter(RetryEvent.objects.filter(job_uuid__in=committed).values_list('kind', flat=True))
    return collect(committed, [], runs_file, extra={
        'replies_cut': len(proxy.cut), 'cut_statements': dict(Counter(s.split()[0] for s in proxy.cut.values())),
        'events': dict(events),
        # Leases (and stored pushes) still held: a retried claim must release the lease its lost reply took.
        'dispatch_rows_left': JobDispatch.objects.filter(job__job_id__in=committed).count(),
    })


HARNESS_TAG = 'safejobs-harness-'


def _gate(ctx):
    """A ``DatabaseGate`` to the harness's own database server, started."""
    from django.db import connection

    settings = connection.settings_dict
    return DatabaseGate((settings['HOST'] or '127.0.0.1', int(settings['PORT'] or 5432))).start()


def _horse_pid(runs_file, job_uuid, timeout=120):
    """The pid of the work horse running ``job_uuid`` (once it is inside ``run()``), or None after ``timeout``."""
    pids = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        read_runs(runs_file, pids)
        if job_uuid in pids:
            return pids[job_uuid]
        time.sleep(0.1)
    return None


@scenario
def scenario_horse_sessions(ctx, mode, opts, runs_file):
    """
    One worker: a work horse killed inside its transaction (SIGKILL, as the OOM killer does), then four jobs, then
    another horse killed inside its transaction. Each horse must have a PostgreSQL session of its own, each killed job
    be closed at once, and no killed transaction commit.
    """
    from core.models import Job
    from extras.models import Tag

    from benchmarks.runners import HarnessJob

    sessions_file = Path(f'{runs_file}.sessions')
    sessions_file.unlink(missing_ok=True)
    pool = WorkerPool(ctx, mode, runs_file, count=1)
    killed, closed_after, committed = [], [], []

    def kill_inside_transaction():
        job = HarnessJob.enqueue(hold=120)
        committed.append(job.job_id)
        pid = _horse_pid(runs_file, job.job_id)
        time.sleep(0.5)  # inside its transaction by now
        os.kill(pid, signal.SIGKILL)
        at = time.monotonic()
        killed.append(job.job_id)
        deadline = at + 30
        while time.monotonic() < deadline:
            if Job.objects.filter(job_id=job.job_id).exclude(status='running').exists():
                closed_after.append(round(time.monotonic() - at, 2))
                return
            time.sleep(0.1)
        closed_after.append(None)

    try:
        pool.wait_ready()
        kill_inside_transaction()
        jobs = [HarnessJob.enqueue(session=True).job_id for _ in range(4)]
        committed += jobs
        wait_until_settled(jobs, timeout=opts.timeout, idle=20, pool=pool)
        kill_inside_transaction()
    finally:
        pool.stop()
    sessions = {}
    if sessions_file.exists():
        for line in sessions_file.read_text().splitlines():
            job_uuid, backend, tls = line.split()
            sessions[uuid.UUID(job_uuid)] = (int(backend), tls)
    distinct = len({sessions[u][0] for u in jobs if u in sessions})
    return collect(committed, [], runs_file, extra={
        'killed': len(killed),
        'closed_s_after_kill': ', '.join('never' if c is None else str(c) for c in closed_after),
        'shared_sessions': len(jobs) - distinct,
        'tls_sessions': sum(1 for _, tls in sessions.values() if tls == 'tls'),
        'killed_transactions_committed': Tag.objects.filter(slug__in=[f'{HARNESS_TAG}{u}' for u in killed]).count(),
    })


@scenario
def scenario_pg_blip(ctx, mode, opts, runs_file):
    """
    PostgreSQL unreachable for ``--db-blip-seconds`` (6) while one worker works through a queue of jobs: every job
    must run once, soon after the database answers again.
    """
    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import RetryEvent

    gate = _gate(ctx)
    committed = [HarnessJob.enqueue(sleep=0.3).job_id for _ in range(opts.fault_jobs)]
    pool = WorkerPool(ctx, mode, runs_file, count=1, db_port=gate.port)
    after = None
    try:
        _horse_pid(runs_file, committed[0])
        gate.down()
        time.sleep(opts.db_blip_seconds)
        gate.up()
        back = time.time()
        if wait_until_settled(committed, timeout=opts.timeout, idle=30, pool=pool):
            _, starts = read_runs(runs_file)
            after = round(max(starts.get(u, 0) for u in committed) - back, 2)
    finally:
        pool.stop()
        gate.stop()
    events = Counter(RetryEvent.objects.filter(job_uuid__in=committed).values_list('kind', flat=True))
    return collect(committed, [], runs_file, extra={
        'db_down_s': opts.db_blip_seconds, 'all_ran_s_after_db_back': after, 'events': dict(events),
    })


@scenario
def scenario_pg_outage(ctx, mode, opts, runs_file):
    """
    PostgreSQL unreachable for ``--db-outage-seconds`` (75: longer than ``stuck_after``, as a restart or a failover
    can be) while a periodic job of ``--long-job-seconds`` (100) runs, two workers: the live job must not be closed,
    its horse must not undo a close, and the job must get one next run.
    """
    from core.models import Job

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.models import RetryEvent

    gate = _gate(ctx)
    job = HarnessJob.enqueue(sleep=opts.long_job_seconds, interval=24 * 60)
    pool = WorkerPool(ctx, mode, runs_file, count=2, db_port=gate.port)
    try:
        pool.wait_ready()
        _horse_pid(runs_file, job.job_id)
        time.sleep(2)
        gate.down()
        time.sleep(opts.db_outage_seconds)
        gate.up()
        deadline = time.monotonic() + opts.long_job_seconds + 120
        while time.monotonic() < deadline and Job.objects.filter(job_id=job.job_id, status='running').exists():
            time.sleep(1)
        time.sleep(5)  # whatever the horse's end and the loops still do
    finally:
        pool.stop()
        gate.stop()
    closed = RetryEvent.objects.filter(job_uuid=job.job_id, kind='stuck_errored').count()
    next_runs = Job.objects.filter(name=HarnessJob.name, interval=24 * 60, status='scheduled').count()
    return collect([job.job_id], [], runs_file, extra={
        'db_down_s': opts.db_outage_seconds,
        'live_jobs_closed': closed,
        'next_runs': next_runs,
        'extra_next_runs': max(0, next_runs - 1),
    })


ROTATED_SETTINGS = 'safejobs_harness_rotated_settings'
ROTATED_SETTINGS_TEXT = """\
# Written by benchmarks/harness.py: NetBox's settings with SECRET_KEY rotated the way Django documents it, a new key
# and the old one in SECRET_KEY_FALLBACKS (a NetBox operator sets them in netbox/local_settings.py).
from netbox.settings import *  # noqa: F403

SECRET_KEY_FALLBACKS = [SECRET_KEY]  # noqa: F405
SECRET_KEY = 'rotated-' + SECRET_KEY[::-1]  # noqa: F405
"""


@scenario
def scenario_key_rotation(ctx, mode, opts, runs_file):
    """
    ``--fault-jobs`` pushes owed while Redis is down; meanwhile ``SECRET_KEY`` is rotated as Django documents it (the
    workers start with the new key, the old one in ``SECRET_KEY_FALLBACKS``); Redis comes back. Every job must run.
    """
    from netbox_safejobs.models import RetryEvent

    settings_dir = ctx.workdir / 'rotated'
    settings_dir.mkdir(exist_ok=True)
    (settings_dir / f'{ROTATED_SETTINGS}.py').write_text(ROTATED_SETTINGS_TEXT)
    ctx.redis.stop()
    try:
        committed, _, exceptions, _ = enqueue_many(opts.fault_jobs, threads=2)
    finally:
        ctx.redis.start()
    env = ctx.env(mode, runs_file)
    env.update(DJANGO_SETTINGS_MODULE=ROTATED_SETTINGS,
               PYTHONPATH=os.pathsep.join([str(settings_dir), env['PYTHONPATH']]))
    pool = WorkerPool(ctx, mode, runs_file, count=1, env=env)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=20, pool=pool)
    finally:
        pool.stop()
    rejected = RetryEvent.objects.filter(job_uuid__in=committed, kind='payload_rejected').count()
    return collect(committed, [], runs_file, caller_exceptions=exceptions, extra={'pushes_rejected': rejected})


# The first release, numbered 0.1.0 (its code is this repository's own history).
FIRST_RELEASE = 'c98a7b3'

FIRST_RELEASE_ENQUEUE = """
from benchmarks.runners import HarnessJob
for _ in range({count}):
    print(HarnessJob.enqueue().job_id, flush=True)
"""


@scenario
def scenario_upgrade_from_0_1(ctx, mode, opts, runs_file):
    """
    An upgrade from the first release (0.1.0) with jobs in flight: under 0.1.0, 10 jobs pushed and 5 whose push failed
    (Redis down); its workers stopped; Redis restarted in the maintenance window (empty); this release installed,
    ``netbox migrate``, one worker started. Every job must run, once. Plugin mode only: stock NetBox has no upgrade.
    """
    if mode == 'stock':
        return {'note': 'not applicable'}
    old = ctx.workdir / 'release-0.1.0'
    if not old.exists():
        old.mkdir()
        archive = subprocess.run(['git', '-C', str(ROOT), 'archive', FIRST_RELEASE, 'netbox_safejobs'],
                                 capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(old)], input=archive, check=True)
    new_env = ctx.env(mode, runs_file)
    old_env = dict(new_env, SAFEJOBS_PLUGINS_CONFIG='{}',
                   PYTHONPATH=os.pathsep.join([str(old), new_env['PYTHONPATH']]))

    def netbox(env, *argv, check=True):
        # Not from the repository root: `python -m` puts the working directory first on sys.path, ahead of
        # PYTHONPATH, and the old release would be shadowed by this checkout's package.
        result = subprocess.run(netbox_command(*argv), env=env, capture_output=True, text=True, timeout=900,
                                cwd=ctx.workdir)
        if check and result.returncode != 0:
            raise RuntimeError(f'netbox {" ".join(argv)} failed:\n{(result.stdout + result.stderr)[-3000:]}')
        return result

    def enqueue_old(count):
        out = netbox(old_env, 'shell', '--command', FIRST_RELEASE_ENQUEUE.format(count=count)).stdout
        return [uuid.UUID(line) for line in out.split() if len(line) == 36]

    # The database as 0.1.0 left it (the harness's own connection closed: the schema changes under it).
    from django.db import connection

    from netbox_safejobs.payload import is_signed

    connection.close()
    netbox(new_env, 'migrate', 'netbox_safejobs', '0001', '--no-input')
    try:
        out = netbox(old_env, 'shell', '--command', 'import netbox_safejobs.version as v; '
                     'print("VERSION", v.__version__, v.__file__)').stdout
        version = next(line.split()[1:] for line in out.splitlines() if line.startswith('VERSION '))
        pushed = enqueue_old(10)
        ctx.redis.stop()
        owed = enqueue_old(5)
        ctx.redis.start()  # the maintenance window: Redis restarted, empty
        with connection.cursor() as cursor:
            cursor.execute('SELECT payload FROM netbox_safejobs_jobdispatch WHERE job_uuid = ANY(%s)',
                           [pushed + owed])
            unsigned = sum(1 for (payload,) in cursor.fetchall() if payload is not None and not is_signed(payload))
        connection.close()
    finally:
        netbox(new_env, 'migrate', '--no-input')
    committed = pushed + owed
    pool = WorkerPool(ctx, mode, runs_file, count=1)
    try:
        wait_until_settled(committed, timeout=opts.timeout, idle=30, pool=pool)
    finally:
        pool.stop()
    return collect(committed, [], runs_file, extra={
        'first_release': f'{version[0]} ({FIRST_RELEASE}, loaded from {Path(version[1]).parent.parent.name}/)',
        'pushed_by_0_1': len(pushed), 'owed_by_0_1': len(owed), 'unsigned_by_0_1': unsigned,
    })


@scenario
def scenario_snapshot_restore(ctx, mode, opts, runs_file):
    """
    Redis restarted from an RDB snapshot taken before ``--fault-jobs`` pushes (the relay's marker is in it, the jobs
    are not), while no worker runs; then a worker starts. Every job must run once, soon after the worker starts.
    """
    from django_rq import get_connection

    from netbox_safejobs.models import WorkerHeartbeat

    pool = WorkerPool(ctx, mode, runs_file, count=1)
    pool.wait_ready()
    time.sleep(2)  # the plugin's relay has set its marker
    pool.stop()
    snapshot = ctx.redis.dir / 'dump.rdb'
    after = None
    try:
        get_connection('default').save()
        committed, _, exceptions, _ = enqueue_many(opts.fault_jobs, threads=2)
        ctx.redis.stop()  # SIGKILL: nothing saved on the way out
        ctx.redis.start()  # loads the older snapshot
        started = time.time()
        pool = WorkerPool(ctx, mode, runs_file, count=1)
        try:
            if wait_until_settled(committed, timeout=opts.timeout, idle=20, pool=pool):
                _, starts = read_runs(runs_file)
                after = round(max(starts.get(u, 0) for u in committed) - started, 2)
            beat = WorkerHeartbeat.objects.order_by('started').values_list('started', flat=True).last()
        finally:
            pool.stop()
    finally:
        snapshot.unlink(missing_ok=True)
    return collect(committed, [], runs_file, caller_exceptions=exceptions, extra={
        'all_ran_s_after_worker_start': after,
        'all_ran_s_after_first_heartbeat': (round(max(read_runs(runs_file)[1].get(u, 0) for u in committed)
                                            - beat.timestamp(), 2) if after is not None and beat else None),
    })


# Heartbeats every second and the shortest stuck bound the settings allow, where a scenario kills whole workers and
# waits for their jobs to be closed by the next ones (plugin only; stock NetBox has no liveness to set).
LIVELY = {'heartbeat_interval': 1, 'stuck_after': 10}


def _children(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _kill_pool(pool):
    """
    SIGKILL every worker of ``pool`` and its work horse (RQ runs a horse in a session of its own): a host lost, or an
    OOM kill of the whole service. Then what RQ does once a dead worker's registration expires (``worker_ttl``, 420 s
    by default): its key is removed, so that no registration vouches for the jobs it ran.
    """
    from django_rq import get_connection
    from rq import worker_registration
    from rq.worker import Worker

    pool._stopping.set()
    if pool._supervisor:
        pool._supervisor.join()
    pids = {p.pid for p in pool.processes}
    horses = [child for pid in pids for child in _children(pid)]
    for pid in [*pids, *horses]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in pool.processes:
        process.wait()
    connection = get_connection('default')
    for worker in Worker.all(connection=connection):
        if worker.pid in pids:
            worker_registration.unregister(worker)
            connection.delete(worker.key)
    return horses


def _delete_tasks(job_uuids):
    """Redis loses these tasks (and only these): their hashes and their places in queues and registries."""
    from django_rq import get_connection
    from rq.job import Job as RQJob

    connection = get_connection('default')
    for task in RQJob.fetch_many([str(u) for u in job_uuids], connection=connection):
        if task is not None:
            task.delete()


def _task_runnable(job_uuids):
    """The jobs whose task Redis holds runnable (queued, scheduled, deferred or started)."""
    from django_rq import get_connection
    from rq.job import Job as RQJob

    tasks = RQJob.fetch_many([str(u) for u in job_uuids], connection=get_connection('default'))
    return {uuid.UUID(task.id) for task in tasks
            if task is not None and task.get_status(refresh=False) in ('queued', 'scheduled', 'deferred', 'started')}


@scenario
def scenario_adoption(ctx, mode, opts, runs_file):
    """
    What stock NetBox leaves in the database, made by stock code paths in both modes (NetBox #22714): jobs left
    running by workers SIGKILLed mid-job, waiting jobs with their task in Redis, waiting jobs whose task Redis lost
    (jobs whose arguments were only in the task, and the system jobs' next runs). Then the mode's workers start once.
    Stock: what was stuck stays stuck. Plugin: each job decided once, at the workers' start-up (``adoption.py``).
    """
    from datetime import timedelta

    from core.models import Job
    from django.utils import timezone
    from netbox.registry import registry

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.choices import CLAIMABLE_STATES, RetryEventKindChoices
    from netbox_safejobs.jobs import system_job_runners
    from netbox_safejobs.models import JobDispatch, RetryEvent

    systems = system_job_runners()
    waiting_systems = Job.objects.filter(name__in=list(systems), object_type__isnull=True,
                                         status__in=CLAIMABLE_STATES)
    waiting_systems.delete()
    set_mode('stock')
    try:
        running = [HarnessJob.enqueue(sleep=120).job_id for _ in range(ctx.workers)]
        old = WorkerPool(ctx, 'stock', runs_file)
        try:
            wait_running(runs_file, running)
        finally:
            _kill_pool(old)
        queued, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
        lost, _, _, _ = enqueue_many(opts.fault_jobs, threads=2)
        # Each system job's next run, as a stock worker leaves it: one waiting run (its task lost below, #22714).
        for name, runner in systems.items():
            if not waiting_systems.filter(name=name).exists():
                interval = registry['system_jobs'][runner]['interval']
                runner.enqueue(schedule_at=timezone.now() + timedelta(minutes=interval), interval=interval)
    finally:
        set_mode(mode)
    system_runs = list(waiting_systems.values_list('job_id', flat=True))
    _delete_tasks(lost + system_runs)
    left = {'running': len(running), 'waiting with a task': len(queued),
            'waiting, task lost': len(lost), 'system job runs, task lost': len(system_runs)}
    # Judged by their age: saved more than unknown_push_age (10 s) before the workers start.
    time.sleep(11)
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        pool.wait_ready()
        wait_until_settled(queued, timeout=opts.timeout, idle=15, pool=pool)
        time.sleep(3)
    finally:
        pool.stop()
    everything = running + queued + lost + system_runs
    rows = dict(Job.objects.filter(job_id__in=everything).values_list('job_id', 'status'))
    watched = set(JobDispatch.objects.filter(job_uuid__in=everything).values_list('job_uuid', flat=True))
    listed = set(RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_NOT_ADOPTED, job_uuid__in=everything)
                 .values_list('job_uuid', flat=True))
    runnable = _task_runnable(system_runs + lost)
    left_running = sum(1 for u in running if rows.get(u) == 'running')
    lost_unlisted = sum(1 for u in lost if rows.get(u) in CLAIMABLE_STATES and u not in listed | runnable)
    systems_dead = sum(1 for u in system_runs if rows.get(u) in CLAIMABLE_STATES
                       and u not in watched | runnable)
    adopted = RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_ADOPTED, job_uuid__in=everything).count()
    runs, _ = read_runs(runs_file)
    Job.objects.filter(job_id__in=system_runs).delete()
    RetryEvent.objects.filter(job_uuid__in=system_runs).delete()
    return {
        'left_by_stock': ', '.join(f'{count} {what}' for what, count in left.items()),
        'stuck_running': left_running,
        'queued_completed': sum(1 for u in queued if rows.get(u) == 'completed'),
        'lost_listed': len(listed & set(lost)),
        'lost_unlisted': lost_unlisted,
        'system_runs_without_task': systems_dead,
        'adopted_events': adopted,
        'unwatched': left_running + lost_unlisted + systems_dead,
        'runs': sum(runs.values()),
        'duplicate_runs': sum(1 for c in runs.values() if c > 1),
    }


def _make_due(pks):
    """Time passes: the waiting runs ``pks`` are due now, in the database and in RQ's registry of scheduled tasks."""
    from core.models import Job
    from django.utils import timezone
    from django_rq import get_queue
    from rq.registry import ScheduledJobRegistry

    now = timezone.now()
    runs = list(Job.objects.filter(pk__in=pks, status='scheduled'))
    Job.objects.filter(pk__in=[run.pk for run in runs]).update(scheduled=now)
    for name in QUEUES:
        queue = get_queue(name)
        registry = ScheduledJobRegistry(queue=queue)
        scheduled = set(registry.get_job_ids())
        for run in runs:
            if str(run.job_id) in scheduled:
                registry.schedule(queue.fetch_job(str(run.job_id)), now)


@scenario
def scenario_chains(ctx, mode, opts, runs_file):
    """
    A simulated day of worker restarts: ``--chain-cycles`` cycles, each a restart of every worker (NetBox's
    ``enqueue_once()`` of the system jobs at each start) after which the next run of every periodic job is due; every
    fourth restart, from the second, kills the workers with SIGKILL in the middle of the runs (an OOM kill, a host
    lost). At the start, each system job has two future runs, as NetBox 4.2 – 4.6.1 leave them (#21167, #22232),
    made by stock code paths in both modes, and due in the first cycle. Counted after the day: future runs per system
    job and per hourly job (a "chain"), runs, and rows left running.
    """
    from datetime import timedelta

    from core.models import Job
    from django.utils import timezone
    from netbox.registry import registry

    from benchmarks.runners import HarnessJob
    from netbox_safejobs.choices import CLAIMABLE_STATES, RetryEventKindChoices
    from netbox_safejobs.jobs import system_job_runners
    from netbox_safejobs.models import RetryEvent

    systems = system_job_runners()
    names = [f'{HarnessJob.name}-chain-{n}' for n in range(2 * ctx.workers)]
    Job.objects.filter(name__in=list(systems), object_type__isnull=True,
                       status__in=CLAIMABLE_STATES).delete()
    started = timezone.now()
    set_mode('stock')
    try:
        for runner in systems.values():
            for minutes in (0, 5):
                runner.enqueue(schedule_at=started + timedelta(days=1, minutes=minutes),
                               interval=registry['system_jobs'][runner]['interval'])
    finally:
        set_mode(mode)
    for name in names:
        HarnessJob.enqueue(name=name, interval=60, sleep=2)
    extra_config = LIVELY if mode == 'plugin' else None
    try:
        for cycle in range(opts.chain_cycles):
            cycle_start = time.monotonic()
            pool = WorkerPool(ctx, mode, runs_file, extra_config=extra_config)
            kill = cycle % 4 == 1
            try:
                pool.wait_ready()
                time.sleep(2)  # the workers' first tick: the plugin's adoption and merge of chains
                waiting = Job.objects.filter(status__in=CLAIMABLE_STATES)
                due = list(waiting.filter(name__in=names).values_list('pk', flat=True))
                if cycle == 0:
                    due += list(waiting.filter(name__in=list(systems), object_type__isnull=True)
                                .values_list('pk', flat=True))
                _make_due(due)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    runs = Job.objects.filter(pk__in=due)
                    if kill and runs.filter(status='running').count() >= min(ctx.workers, len(due)):
                        break
                    if not kill and not runs.filter(status__in=(*CLAIMABLE_STATES, 'running')).exists():
                        break
                    time.sleep(0.2)
                if not kill:
                    # Workers run on: the plugin's liveness closes what the previous restart killed (stuck_after).
                    time.sleep(max(0.0, 20 - (time.monotonic() - cycle_start)))
            finally:
                if kill:
                    _kill_pool(pool)
                else:
                    pool.stop()
        waiting = Job.objects.filter(status__in=CLAIMABLE_STATES)
        chain_runs = {name: waiting.filter(name=name).count() for name in names}
        system_runs = {name: waiting.filter(name=name, object_type__isnull=True).count() for name in systems}
        left_running = Job.objects.filter(name__in=names, status='running').count()
        ran = Job.objects.filter(created__gte=started, status__in=('completed', 'errored', 'failed'))
        runs, _ = read_runs(runs_file)
        return {
            'cycles': opts.chain_cycles,
            'system_jobs': len(systems),
            'system_job_runs': ran.filter(name__in=list(systems), object_type__isnull=True).count(),
            'system_job_future_runs': ', '.join(str(system_runs[name]) for name in systems),
            'chains': len(names),
            'chain_runs': ran.filter(name__in=names).count(),
            'chains_broken': sum(1 for count in chain_runs.values() if count == 0),
            'chains_doubled': sum(1 for count in chain_runs.values() if count > 1),
            'chain_rows_left_running': left_running,
            'extra_future_runs': sum(max(0, count - 1) for count in [*chain_runs.values(), *system_runs.values()]),
            'merge_events': RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_CHAIN_MERGED).count(),
            'duplicate_runs': sum(1 for c in runs.values() if c > 1),
        }
    finally:
        RetryEvent.objects.filter(job_name__in=names).delete()
        RetryEvent.objects.filter(kind=RetryEventKindChoices.KIND_CHAIN_MERGED).delete()
        Job.objects.filter(name__in=names).delete()
        Job.objects.filter(name__in=list(systems), object_type__isnull=True,
                           status__in=CLAIMABLE_STATES).delete()


@scenario
def scenario_caller_catches(ctx, mode, opts, runs_file):
    """
    Callers that, inside ``transaction.atomic()``, save an object (a Tag), enqueue a job, call an enqueue that raises
    (a name too long for Job.full_clean), catch the error and go on: save again, enqueue another job, commit.
    The caller's transaction must stay usable and keep its data; the valid jobs must each run once.
    """
    from django.core.exceptions import ValidationError
    from django.db import connection, transaction
    from extras.models import Tag

    from benchmarks.runners import HarnessJob

    committed, broken, caught, lock = [], Counter(), Counter(), threading.Lock()
    after_error = 'saved after the caught enqueue error'

    def caller(i):
        slug = f'{HARNESS_TAG}{mode}-{i}'
        jobs = []
        try:
            with transaction.atomic():
                tag = Tag.objects.create(name=slug, slug=slug)
                jobs.append(HarnessJob.enqueue().job_id)
                try:
                    HarnessJob.enqueue(name='x' * 300)
                except ValidationError as e:
                    with lock:
                        caught[type(e).__name__] += 1
                tag.description = after_error
                tag.save()
                jobs.append(HarnessJob.enqueue().job_id)
        except Exception as e:
            with lock:
                broken[type(e).__name__] += 1
            return
        with lock:
            committed.extend(jobs)

    def run_callers(indices):
        try:
            for i in indices:
                caller(i)
        finally:
            connection.close()

    # The callers do not wait for the workers to be listening: their jobs queue up meanwhile.
    pool = WorkerPool(ctx, mode, runs_file)
    try:
        threads = 4
        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(run_callers, [range(t, opts.fault_jobs, threads) for t in range(threads)]))
        wait_until_settled(committed, timeout=opts.timeout, idle=15, pool=pool)
    finally:
        pool.stop()
    kept = Tag.objects.filter(slug__startswith=f'{HARNESS_TAG}{mode}-', description=after_error).count()
    return collect(committed, [], runs_file, caller_exceptions=broken, extra={
        'callers': opts.fault_jobs, 'enqueue_errors_caught': sum(caught.values()),
        'callers_broken': opts.fault_jobs - kept, 'saved_kept': kept,
    })


# --------------------------------------------------------------------------------------------------------------------
# The other doors: event rules' webhooks and script runs (pushed outside JobRunner.enqueue, or gated on Redis)
# --------------------------------------------------------------------------------------------------------------------

class Doors:
    """
    What the door scenarios share: a webhook receiver in this process, an event rule that sends a webhook for every
    harness tag created, and a logged-in client of NetBox's REST API and UI (Django's test client, in this process:
    each request goes through NetBox's middleware, event tracking included). ``close()`` removes the rule.
    """

    def __init__(self):
        from core.models import ObjectType
        from django.test import Client
        from extras.models import EventRule, Tag, Webhook
        from users.models import User

        from netbox_safejobs.testing.receiver import WebhookReceiver

        self.receiver = WebhookReceiver()
        self.webhook, _ = Webhook.objects.update_or_create(name=f'{HARNESS_TAG}receiver',
                                                           defaults={'payload_url': self.receiver.url})
        self.rule, _ = EventRule.objects.update_or_create(
            name=f'{HARNESS_TAG}tags', defaults={
                'event_types': ['object_created'], 'action_type': 'webhook', 'enabled': True,
                'action_object_type': ObjectType.objects.get_for_model(Webhook), 'action_object_id': self.webhook.pk,
            })
        self.rule.object_types.set([ObjectType.objects.get_for_model(Tag)])
        user, _ = User.objects.get_or_create(username=f'{HARNESS_TAG}operator', defaults={'is_superuser': True})
        # An exception in a view is a 500 for the caller, as behind a web server, not an exception here.
        self.client = Client(raise_request_exception=False)
        self.client.force_login(user)

    def create_tag(self, name):
        """POST /api/extras/tags/: the HTTP status."""
        return self.client.post('/api/extras/tags/', data=json.dumps({'name': name, 'slug': name}),
                                content_type='application/json').status_code

    def delivered(self, names, timeout, idle=10):
        """Wait until every name was delivered, or nothing arrived for ``idle`` s; the receiver's names."""
        deadline, last, last_change = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.receiver.names()
            if set(names) <= set(got):
                return got
            if len(got) != last:
                last, last_change = len(got), time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
            time.sleep(0.05)
        return self.receiver.names()

    def outcome(self, names, back=None, failed_requests=0):
        got = Counter(name for name in self.receiver.names() if name in set(names))
        times = [t for body, t in zip(self.receiver.bodies, self.receiver.times, strict=True)
                 if body.get('data', {}).get('name') in set(names)]
        return {
            'webhooks': len(names), 'requests_failed': failed_requests,
            'webhooks_delivered': len(got), 'webhooks_lost': len(set(names) - set(got)),
            'webhooks_twice': sum(1 for count in got.values() if count > 1),
            'first_delivered_s_after_redis_back': round(min(times) - back, 2) if back and times else None,
            'delivered_s_after_redis_back': (round(max(times) - back, 2) if back and times and len(got) == len(names)
                                             else None),
        }

    def close(self):
        from extras.models import EventRule, Webhook

        EventRule.objects.filter(pk=self.rule.pk).delete()
        Webhook.objects.filter(pk=self.webhook.pk).delete()
        self.receiver.stop()


@scenario
def scenario_webhooks_outage(ctx, mode, opts, runs_file):
    """
    Webhooks during a 5 s Redis outage, workers running throughout: tags created through the REST API while Redis is
    down, each with an event rule's webhook. Every request must succeed and every webhook arrive once, soon after
    Redis answers again.
    """
    doors = Doors()
    pool = WorkerPool(ctx, mode, runs_file)
    names = [f'{HARNESS_TAG}{mode}-outage-{i}' for i in range(opts.fault_jobs)]
    try:
        pool.wait_ready()
        warm = f'{HARNESS_TAG}{mode}-warm'
        doors.create_tag(warm)
        doors.delivered([warm], timeout=30)
        statuses, back = _outage(ctx, 5, lambda: [doors.create_tag(name) for name in names])
        doors.delivered(names, timeout=opts.timeout, idle=15)
        time.sleep(2)  # a second copy of any webhook would arrive by now
        return doors.outcome(names, back, failed_requests=sum(1 for status in statuses if status >= 300))
    finally:
        pool.stop()
        doors.close()


@scenario
def scenario_webhooks_flushed(ctx, mode, opts, runs_file):
    """
    Redis flushed (FLUSHALL, a failover to an empty replica) with webhooks queued and no worker running yet: once the
    workers start, every webhook must arrive, once.
    """
    from django_rq import get_connection

    doors = Doors()
    names = [f'{HARNESS_TAG}{mode}-flushed-{i}' for i in range(opts.fault_jobs)]
    try:
        statuses = [doors.create_tag(name) for name in names]
        get_connection('default').flushall()
        pool = WorkerPool(ctx, mode, runs_file)
        try:
            doors.delivered(names, timeout=opts.timeout, idle=20)
            time.sleep(2)
        finally:
            pool.stop()
        return doors.outcome(names, failed_requests=sum(1 for status in statuses if status >= 300))
    finally:
        doors.close()


@scenario
def scenario_webhooks_rolled_back(ctx, mode, opts, runs_file):
    """
    A change whose events are flushed inside a transaction that then rolls back (a script or plugin wrapping NetBox's
    event tracking in its own ``transaction.atomic()``): no webhook may be sent for it. Run with django-rq's
    ``COMMIT_MODE`` ``auto`` (django-rq before 3.0, and NetBox's own test configuration): under the default of
    django-rq 3.0 and later, ``on_db_commit``, stock NetBox defers the push to the commit too.
    """
    from django.conf import settings
    from django.db import transaction
    from django.test import RequestFactory, override_settings
    from extras.models import Tag
    from netbox.context_managers import event_tracking
    from users.models import User

    class Rollback(Exception):
        pass

    def rolled_back(names, user):
        for name in names:
            request = RequestFactory().post('/api/extras/tags/')
            request.user, request.id = user, uuid.uuid4()
            try:
                with transaction.atomic():
                    with event_tracking(request):
                        Tag.objects.create(name=name, slug=name)
                    raise Rollback
            except Rollback:
                pass

    doors = Doors()
    pool = WorkerPool(ctx, mode, runs_file)
    names = [f'{HARNESS_TAG}{mode}-rolled-back-{i}' for i in range(opts.fault_jobs)]
    try:
        pool.wait_ready()
        user = User.objects.get(username=f'{HARNESS_TAG}operator')
        with override_settings(RQ={**getattr(settings, 'RQ', {}), 'COMMIT_MODE': 'auto'}):
            rolled_back(names, user)
        committed = f'{HARNESS_TAG}{mode}-committed'
        doors.create_tag(committed)  # the workers deliver this one: the rolled-back ones had their chance before it
        doors.delivered([committed], timeout=60)
        time.sleep(2)
        sent = sum(1 for name in doors.receiver.names() if name in set(names))
        return {'webhooks': len(names), 'webhooks_rolled_back_sent': sent, 'commit_mode': 'auto',
                'ghost_rows': Tag.objects.filter(slug__in=names).count()}
    finally:
        pool.stop()
        doors.close()


PROBE_SCRIPT = """
from extras.scripts import Script


class SafejobsHarnessProbe(Script):
    class Meta:
        name = 'safejobs harness probe'

    def run(self, data, commit):
        return 'ran'
"""


@scenario
def scenario_script_outage(ctx, mode, opts, runs_file):
    """
    A script run through the REST API and through the UI while Redis is away, workers running: accepted (NetBox's
    worker check answered), and run once each when Redis answers again.
    """
    from core.models import Job, ObjectType
    from django.conf import settings
    from django.urls import reverse
    from extras.models import Script, ScriptModule

    path = Path(settings.SCRIPTS_ROOT) / 'safejobs_harness_probe.py'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PROBE_SCRIPT)
    ScriptModule.objects.filter(file_path=path.name).delete()
    module = ScriptModule.objects.create(file_root='scripts', file_path=path.name)
    script = Script.objects.get(module=module)
    runs = Job.objects.filter(object_type=ObjectType.objects.get_for_model(Script), object_id=script.pk)
    doors = Doors()
    pool = WorkerPool(ctx, mode, runs_file)
    tries = max(1, opts.fault_jobs // 4)
    try:
        pool.wait_ready()
        time.sleep(2)  # the plugin's workers heartbeat at start-up; stock ones registered with Redis

        def run_scripts():
            api = [doors.client.post(f'/api/extras/scripts/{script.pk}/', content_type='application/json',
                                     data=json.dumps({'data': {}, 'commit': True})).status_code
                   for _ in range(tries)]
            ui = [doors.client.post(f'/extras/scripts/{script.pk}/', {'_commit': 'on', '_notifications': 'never'})
                  for _ in range(tries)]
            return api, ui

        (api, ui), back = _outage(ctx, 5, run_scripts)
        accepted_api = sum(1 for status in api if status == 200)
        # The UI redirects to the run's result page when it enqueued one, and answers the form again otherwise.
        result_page = reverse('extras:script_result', kwargs={'job_pk': 0}).rsplit('0/', 1)[0]
        accepted_ui = sum(1 for response in ui if response.status_code == 302 and response.url.startswith(result_page))
        ids = list(runs.values_list('job_id', flat=True))
        wait_until_settled(ids, timeout=opts.timeout, idle=15, pool=pool)
        done = runs.filter(status='completed').count()
        started = [s.timestamp() for s in runs.filter(status='completed').values_list('started', flat=True)]
        return {
            'script_runs': 2 * tries, 'runs_accepted_api': accepted_api, 'runs_accepted_ui': accepted_ui,
            'requests_failed': sum(1 for status in api if status >= 500) + sum(1 for r in ui if r.status_code >= 500),
            'completed': done, 'runs_lost': runs.filter(status__in=('pending', 'scheduled', 'running')).count(),
            'all_ran_s_after_redis_back': round(max(started) - back, 2) if started and done == len(ids) else None,
        }
    finally:
        pool.stop()
        doors.close()
        runs.delete()
        module.delete()
        path.unlink(missing_ok=True)


@scenario
def scenario_cost(ctx, mode, opts, runs_file):
    """Enqueue+commit latency, commit→start latency and throughput with K workers, on trivial jobs."""
    from core.models import Job
    from django.db import transaction

    from benchmarks.runners import HarnessJob

    # 1. enqueue + commit, no worker running.
    latencies = []
    for _ in range(opts.cost_jobs):
        start = time.perf_counter()
        with transaction.atomic():
            HarnessJob.enqueue()
        latencies.append((time.perf_counter() - start) * 1e3)
    cleanup()
    # 2. throughput: jobs queued first, then K workers in burst mode; first start to last completion.
    committed, _, _, _ = enqueue_many(opts.throughput_jobs, threads=2)
    pool = WorkerPool(ctx, mode, runs_file, burst=True)
    pool.wait(timeout=opts.timeout)
    times = Job.objects.filter(job_id__in=committed).values_list('started', 'completed')
    first = min(t[0] for t in times if t[0])
    last = max(t[1] for t in times if t[1])
    throughput = len(committed) / max((last - first).total_seconds(), 1e-6)
    cleanup()
    runs_file.unlink(missing_ok=True)
    # 3. commit → start: workers idle and listening; one job at a time, the next once the previous has started.
    pool = WorkerPool(ctx, mode, runs_file)
    start_latency = []
    try:
        pool.wait_ready()
        for _ in range(opts.latency_jobs):
            with transaction.atomic():
                job = HarnessJob.enqueue()
            committed_at = time.time()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, starts = read_runs(runs_file)
                if job.job_id in starts:
                    start_latency.append((starts[job.job_id] - committed_at) * 1e3)
                    break
                time.sleep(0.002)
    finally:
        pool.stop()
    return {
        'enqueue_commit_ms_p50': round(percentile(latencies, .5), 3),
        'enqueue_commit_ms_p99': round(percentile(latencies, .99), 3),
        'commit_to_start_ms_p50': round(percentile(start_latency, .5), 3),
        'commit_to_start_ms_p99': round(percentile(start_latency, .99), 3),
        'throughput_jobs_per_s': round(throughput, 1),
    }


def _proc_times(pid):
    """
    CPU seconds of a process, from /proc: (its own, its waited-for children's, of which in the kernel, the children's
    minor page faults). Zeros once it is gone.
    """
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0.0, 0
    tick = os.sysconf('SC_CLK_TCK')
    # proc(5) numbers the fields from 1, the pid and the name before ``)``: cminflt is 11, utime 14, stime 15, cutime
    # 16, cstime 17.
    cminflt = int(fields[8])
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick, cstime / tick, cminflt


def _postgres_cpu(cursor):
    """
    CPU seconds of the PostgreSQL server so far: the postmaster, every backend alive and every backend that ended
    (their time is the postmaster's children's time). ``None`` where its data directory or processes cannot be read.
    """
    try:
        cursor.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
        postmaster = int((Path(cursor.fetchone()[0]) / 'postmaster.pid').read_text().split()[0])
    except Exception:
        return None
    own, children = _proc_times(postmaster)[:2]
    total = own + children
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(stat.read_text().rsplit(')', 1)[1].split()[1]) == postmaster:
                total += _proc_times(stat.parent.name)[0]
        except (OSError, ValueError, IndexError):
            continue
    return total


def _commits(cursor):
    cursor.execute('SELECT pg_stat_clear_snapshot()')
    cursor.execute('SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()')
    return cursor.fetchone()[0]


# The parts of the per-job profile, in the order of the table: the roles a statement's process plays.
PROFILE_ROLES = ('enqueuing process', 'worker: main thread', 'worker: safejobs loop', 'work horse')


def statement_profile(rows, harness_pid, worker_pids, jobs):
    """
    Statements per job, and their time to reply (ms per job), by role and by verb and table, from the lines of
    ``statement_log``.
    """
    profile = {}
    for pid, ppid, thread, verb, table, micros in rows:
        if pid == harness_pid:
            role = 'enqueuing process'
        elif pid in worker_pids:
            role = 'worker: safejobs loop' if thread == 'netbox-safejobs' else 'worker: main thread'
        elif ppid in worker_pids:
            role = 'work horse'
        else:
            continue
        entry = profile.setdefault(f'{role} | {verb} {table}', [0, 0])
        entry[0] += 1
        entry[1] += micros
    return {key: {'statements': round(count / jobs, 3), 'ms': round(micros / 1e3 / jobs, 3)}
            for key, (count, micros) in sorted(profile.items())}


@scenario
def scenario_throughput(ctx, mode, opts, runs_file):
    """
    Throughput as in production: ``--workers`` rqworkers listening, one process enqueuing ``--throughput-jobs`` trivial
    jobs, one transaction each, as fast as it can while the workers drain them; from the first enqueue to the last
    completion. With it, per job: CPU of the workers' own processes (their main thread and the plugin's loop), of
    their work horses, of PostgreSQL and of the enqueuing process, and the commits PostgreSQL counted. With
    ``--profile``, every statement is logged instead (``statement_log``) and the run is not a timed one.
    """
    from core.models import Job
    from django.db import connection, transaction

    from benchmarks import statement_log
    from benchmarks.runners import HarnessJob

    log = ctx.workdir / f'statements-{mode}.log' if opts.profile else None
    profiles = ctx.workdir / f'cprofile-{mode}' if opts.profile and opts.cprofile else None
    env = ctx.env(mode, runs_file)
    if log:
        env[statement_log.LOG_VARIABLE] = str(log)
        env['PYTHONPATH'] = os.pathsep.join([str(ROOT / 'benchmarks' / 'statement_hook'), env['PYTHONPATH']])
        statement_log.install(str(log))
    if profiles:
        shutil.rmtree(profiles, ignore_errors=True)
        profiles.mkdir()
        env['SAFEJOBS_HORSE_CPROFILE'] = str(profiles)
    pool = WorkerPool(ctx, mode, runs_file, env=env)
    count = opts.throughput_jobs
    try:
        pool.wait_ready()
        time.sleep(2)  # past each worker loop's first tick and first sweep: what is measured is the steady state
        pids = {process.pid for process in pool.processes}
        with connection.cursor() as cursor:
            commits_before, postgres_before = _commits(cursor), _postgres_cpu(cursor)
        workers_before = [_proc_times(pid) for pid in pids]
        offset = log.stat().st_size if log and log.exists() else 0
        cpu_before, first = time.process_time(), time.time()
        committed = []
        for _ in range(count):
            with transaction.atomic():
                committed.append(HarnessJob.enqueue().job_id)
        enqueue_cpu = time.process_time() - cpu_before
        polls = 0
        deadline = time.monotonic() + opts.timeout
        while time.monotonic() < deadline:
            runs, _ = read_runs(runs_file)
            if len(runs) >= count:
                polls += 1
                if Job.objects.filter(job_id__in=committed, status='completed').count() == count:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f'{mode}: not every job completed within {opts.timeout} s')
        last = max(Job.objects.filter(job_id__in=committed).values_list('completed', flat=True))
        workers_after = [_proc_times(pid) for pid in pids]
        with connection.cursor() as cursor:
            postgres_after = _postgres_cpu(cursor)
    finally:
        pool.stop()
        if log:
            statement_log.install(None)
    time.sleep(1)  # the backends of the stopped workers report their last transactions
    with connection.cursor() as cursor:
        commits = _commits(cursor) - commits_before - polls - 2
    seconds = last.timestamp() - first
    outcome = {
        'throughput_jobs_per_s': round(count / seconds, 2),
        'worker_cpu_ms_per_job': round(sum(a[0] - b[0] for a, b in zip(workers_after, workers_before, strict=True))
                                       * 1e3 / count, 3),
        'horse_cpu_ms_per_job': round(sum(a[1] - b[1] for a, b in zip(workers_after, workers_before, strict=True))
                                      * 1e3 / count, 3),
        'horse_kernel_ms_per_job': round(sum(a[2] - b[2] for a, b in zip(workers_after, workers_before, strict=True))
                                         * 1e3 / count, 3),
        'horse_page_faults_per_job': round(sum(a[3] - b[3] for a, b in zip(workers_after, workers_before,
                                                                            strict=True)) / count),
        'postgres_cpu_ms_per_job': (round((postgres_after - postgres_before) * 1e3 / count, 3)
                                    if postgres_before is not None and postgres_after is not None else None),
        'enqueue_cpu_ms_per_job': round(enqueue_cpu * 1e3 / count, 3),
        'commits_per_job': round(commits / count, 2),
    }
    if log:
        outcome['statements'] = statement_profile(statement_log.read(log, offset), os.getpid(), pids, count)
        outcome['statements_per_job'] = round(sum(v['statements'] for v in outcome['statements'].values()), 2)
    if profiles:
        outcome['horse_profile'] = statement_log.horse_profile(str(profiles), count)
    return outcome


def recovery_at_scale(ctx, opts):
    """Time of one recovery pass with ``filler`` rows in core_job and 1,000 owed pushes (plugin only)."""
    from django.db import connection

    from netbox_safejobs.compat import job_field_values
    from netbox_safejobs.recovery import run_pass

    set_mode('plugin')
    with connection.cursor() as cursor:
        cursor.execute('SELECT count(*) FROM core_job')
        existing = cursor.fetchone()[0]
        filler = max(0, opts.core_job_rows - existing)
        # Column -> SQL value, for the NOT NULL columns this NetBox's Job has.
        columns = {
            'name': "'safejobs-harness-filler'", 'created': "now() - interval '1 day'", 'status': "'completed'",
            'job_id': 'gen_random_uuid()', 'error': "''",
            **job_field_values(queue_name="'default'", notifications="'always'", log_entries="'{}'"),
        }
        cursor.execute(
            f"INSERT INTO core_job ({', '.join(columns)}) "
            f"SELECT {', '.join(columns.values())} FROM generate_series(1, %s)", [filler],
        )
        cursor.execute('ANALYZE core_job')
        cursor.execute('SELECT count(*) FROM core_job')
        total = cursor.fetchone()[0]
    try:
        committed, _, _, _ = enqueue_many(opts.owed, threads=4)
        from django_rq import get_connection

        get_connection('default').flushdb()  # Redis lost every task: the pass owes them all again, then sends them
        start = time.perf_counter()
        report = run_pass()
        elapsed = time.perf_counter() - start
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM core_job WHERE name = 'safejobs-harness-filler'")
        cleanup()
    return {'core_job_rows': total, 'owed_pushes': opts.owed, 'pushed': len(report.pushed),
            'pass_seconds': round(elapsed, 3)}


# --------------------------------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------------------------------

def broken_guarantees(results):
    broken = []
    for scenario, modes in results.items():
        plugin = modes.get('plugin') or {}
        for key in GUARANTEES:
            if plugin.get(key):
                broken.append(f'{scenario}: {key} = {plugin[key]}')
    return broken


def run(opts, ctx):
    """Run the selected scenarios for both modes; returns {scenario: {mode: outcome}}."""
    results = {}
    cleanup()
    for scenario in opts.scenarios:
        results[scenario] = {}
        if scenario in PAIRED and opts.pairs > 1 and not opts.profile:
            results[scenario] = run_pairs(opts, ctx, scenario)
            continue
        for mode in MODES:
            set_mode(mode)
            runs_file = ctx.workdir / f'{scenario}-{mode}.runs'
            runs_file.unlink(missing_ok=True)
            started, restarts = time.monotonic(), len(ctx.restarts)
            print(f'--- {scenario} / {mode}', flush=True)
            try:
                outcome = SCENARIOS[scenario](ctx, mode, opts, runs_file)
            finally:
                set_mode('plugin')
                if not ctx.redis.running():
                    ctx.redis.start()
                cleanup()
            outcome['worker_restarts'] = len(ctx.restarts) - restarts
            outcome['seconds'] = round(time.monotonic() - started, 1)
            results[scenario][mode] = outcome
            print(json.dumps(outcome, default=str), flush=True)
    if opts.recovery_scale:
        results['recovery_at_scale'] = {'plugin': recovery_at_scale(ctx, opts)}
    return results


def run_pairs(opts, ctx, scenario):
    """
    A scenario of ``PAIRED`` ``opts.pairs`` times, stock and plugin one after the other, the order alternating from
    pair to pair so that neither mode always runs on a warmer (or busier) machine. Returns the median of each figure
    per mode, and the plugin/stock ratio of every pair under ``'pairs'``.
    """
    rows = PAIRED[scenario]
    pairs = []
    for number in range(opts.pairs):
        pair = {}
        for mode in (MODES if number % 2 == 0 else tuple(reversed(MODES))):
            set_mode(mode)
            runs_file = ctx.workdir / f'{scenario}-{number}-{mode}.runs'
            runs_file.unlink(missing_ok=True)
            print(f'--- {scenario} pair {number + 1}/{opts.pairs} / {mode}', flush=True)
            try:
                pair[mode] = SCENARIOS[scenario](ctx, mode, opts, runs_file)
            finally:
                set_mode('plugin')
                cleanup()
            print(json.dumps(pair[mode]), flush=True)
        pairs.append(pair)
    result = {mode: {key: round(statistics.median(p[mode][key] for p in pairs), 3) for key, _ in rows
                     if all(p[mode].get(key) is not None for p in pairs)}
              for mode in MODES}
    result['pairs'] = [{key: round(p['plugin'][key] / p['stock'][key], 3) for key, _ in rows
                        if p['stock'].get(key) and p['plugin'].get(key) is not None}
                       for p in pairs]
    return result


def order_balanced(ratios):
    """
    The plugin/stock ratio with the order within a pair cancelled out: the geometric mean of the mean log-ratio of
    the pairs that ran stock first (even-numbered, from 0) and that of the pairs that ran the plugin first. On a
    small machine the second run of a pair can be faster whatever its mode; with an odd number of pairs, the plain
    median then leans towards the order that ran more often. ``None`` with fewer than two pairs.
    """
    import math

    first = [math.log(r) for r in ratios[0::2] if r]
    second = [math.log(r) for r in ratios[1::2] if r]
    if not first or not second:
        return None
    return math.exp((statistics.fmean(first) + statistics.fmean(second)) / 2)


ROWS = (
    ('jobs', 'jobs'), ('committed', 'committed'), ('completed', 'completed'), ('errored', 'errored/failed'),
    ('lost', 'lost (left pending/running)'), ('left_running', 'of which left running'),
    ('ghost_rows', 'ghost rows'), ('resurrected', 'resurrected rows'),
    ('runs', 'run() calls'), ('duplicate_runs', 'jobs run twice'), ('caller_exceptions', 'caller exceptions'),
    ('rq_failed', 'RQ failed registry'), ('all_ran_s_after_redis_back', 'all ran, s after Redis back'),
    ('outage_s', 'Redis down, s'), ('outages', 'Redis outages, s each'),
    ('ran_s_after_redis_back_p50', 'ran, s after Redis back: p50'),
    ('ran_s_after_redis_back_max', 'ran, s after Redis back: max'),
    ('all_ran_s_after_flush', 'all ran, s after the flush'), ('deleted', 'rows deleted'),
    ('next_runs_of_deleted', 'next runs of deleted periodic jobs'), ('killed', 'work horses killed'),
    ('closed_s_after_kill', 'closed, s after the kill'), ('owed_pushes', 'owed pushes'),
    ('stopped', 'running jobs stopped (stock: deleted)'), ('horse_ended_s_p50', 'work horse ended, s after: p50'),
    ('horse_ended_s_max', 'work horse ended, s after: max'), ('horses_ran_on', 'work horses running on past 2 s'),
    ('relays', 'concurrent relays'),
    ('pushed', 'pushes reaching Redis'), ('double_sends', 'sent twice'), ('not_sent', 'not sent'),
    ('duplicate_skipped', 'duplicate skipped events'),
    ('connections_terminated', 'connections terminated'),
    ('replies_cut', 'replies lost after the commit'), ('cut_statements', 'statements whose reply was lost'),
    ('callers', 'callers'), ('enqueue_errors_caught', 'enqueue errors caught'),
    ('callers_broken', 'callers whose transaction broke'), ('saved_kept', 'saved objects kept'),
    ('events', 'plugin events'), ('dispatch_rows_left', 'leases/pushes left in the outbox'),
    ('shared_sessions', 'work horses sharing a session (of 4)'), ('tls_sessions', 'TLS sessions'),
    ('killed_transactions_committed', 'killed transactions committed'),
    ('db_down_s', 'PostgreSQL unreachable, s'), ('all_ran_s_after_db_back', 'all ran, s after PostgreSQL back'),
    ('live_jobs_closed', 'live job closed'), ('next_runs', 'next runs scheduled'),
    ('extra_next_runs', 'next runs too many'),
    ('pushes_rejected', 'stored pushes rejected'),
    ('first_release', 'first release'), ('pushed_by_0_1', 'pushed by 0.1.0'), ('owed_by_0_1', 'owed by 0.1.0'),
    ('unsigned_by_0_1', 'pushes 0.1.0 stored unsigned'),
    ('note', 'note'),
    ('webhooks', 'webhooks (one per tag created)'), ('requests_failed', 'requests failed (HTTP 5xx)'),
    ('webhooks_delivered', 'webhooks delivered'), ('webhooks_lost', 'webhooks never delivered'),
    ('webhooks_twice', 'webhooks delivered twice'),
    ('first_delivered_s_after_redis_back', 'first delivered, s after Redis back'),
    ('delivered_s_after_redis_back', 'all delivered, s after Redis back'),
    ('commit_mode', "django-rq's COMMIT_MODE in the enqueuing process"),
    ('webhooks_rolled_back_sent', 'webhooks sent for rolled-back changes'),
    ('script_runs', 'script runs requested (REST API + UI)'), ('runs_accepted_api', 'accepted by the REST API'),
    ('runs_accepted_ui', 'accepted by the UI'), ('runs_lost', 'script runs left pending'),
    ('all_ran_s_after_worker_start', 'all ran, s after the worker process started'),
    ('all_ran_s_after_first_heartbeat', 'all ran, s after its first heartbeat'),
    ('left_by_stock', 'left by stock NetBox before the start-up'),
    ('stuck_running', 'left running, no worker running them'),
    ('queued_completed', 'waiting with a task: completed'), ('lost_listed', 'task lost: listed for the operator'),
    ('lost_unlisted', 'task lost: left waiting, unlisted'),
    ('system_runs_without_task', 'system job runs left without a task'), ('adopted_events', '"adopted" events'),
    ('unwatched', 'jobs nothing watches'), ('cycles', 'restarts (one per simulated hour)'),
    ('system_jobs', 'system jobs'), ('system_job_runs', 'system job runs (each due once)'),
    ('system_job_future_runs', 'future runs per system job, after'), ('chains', 'hourly jobs'),
    ('chain_runs', 'hourly job runs'), ('chains_broken', 'hourly jobs without a future run, after'),
    ('chains_doubled', 'hourly jobs with two or more future runs, after'),
    ('chain_rows_left_running', 'hourly job rows left running'), ('extra_future_runs', 'future runs too many'),
    ('merge_events', '"chain merged" events'),
    ('worker_restarts', 'workers restarted'),
    ('seconds', 'scenario time, s'),
)
COST_ROWS = (
    ('enqueue_commit_ms_p50', 'enqueue+commit p50, ms'), ('enqueue_commit_ms_p99', 'enqueue+commit p99, ms'),
    ('commit_to_start_ms_p50', 'commit→start p50, ms'), ('commit_to_start_ms_p99', 'commit→start p99, ms'),
    ('throughput_jobs_per_s', 'throughput, jobs/s'),
)
THROUGHPUT_ROWS = (
    ('throughput_jobs_per_s', 'throughput, jobs/s'),
    ('worker_cpu_ms_per_job', 'CPU of the workers (main thread, loop), ms/job'),
    ('horse_cpu_ms_per_job', 'CPU of the work horses, ms/job'),
    ('horse_kernel_ms_per_job', 'of which in the kernel (fork, page faults, exit), ms/job'),
    ('horse_page_faults_per_job', 'page faults of the work horses, per job'),
    ('postgres_cpu_ms_per_job', 'CPU of PostgreSQL, ms/job'),
    ('enqueue_cpu_ms_per_job', 'CPU of the enqueuing process, ms/job'),
    ('commits_per_job', 'commits per job'),
    ('statements_per_job', 'statements per job'),
)
# The scenarios run in interleaved pairs with --pairs, and the figures their pairs compare.
PAIRED = {'cost': COST_ROWS, 'throughput': THROUGHPUT_ROWS}


def statement_table(modes):
    """The per-job profile of a ``--profile`` run: statements and their time to reply, by role, verb and table."""
    stock, plugin = modes.get('stock', {}).get('statements', {}), modes.get('plugin', {}).get('statements', {})
    lines = ['| process | statement | stock: per job | stock: ms/job | plugin: per job | plugin: ms/job |',
             '|---|---|---|---|---|---|']
    role_order = {role: n for n, role in enumerate(PROFILE_ROLES)}
    keys = sorted(set(stock) | set(plugin), key=lambda k: (role_order.get(k.split(' | ')[0], 9), k))
    totals = {}
    for key in keys:
        role, statement = key.split(' | ', 1)
        s, p = stock.get(key, {}), plugin.get(key, {})
        for mode, entry in (('stock', s), ('plugin', p)):
            total = totals.setdefault((role, mode), [0.0, 0.0])
            total[0] += entry.get('statements', 0)
            total[1] += entry.get('ms', 0)
        lines.append(f"| {role} | `{statement}` | {s.get('statements', 0):g} | {s.get('ms', 0):g} | "
                     f"{p.get('statements', 0):g} | {p.get('ms', 0):g} |")
    for role in PROFILE_ROLES:
        s, p = totals.get((role, 'stock'), [0, 0]), totals.get((role, 'plugin'), [0, 0])
        lines.append(f'| **{role}** | all | {s[0]:.2f} | {s[1]:.2f} | {p[0]:.2f} | {p[1]:.2f} |')
    return '\n'.join(lines) + '\n'


def _fmt(value):
    if value is None:
        return '–'
    if isinstance(value, dict):
        return ', '.join(f'{k} {v}' for k, v in sorted(value.items())) or '0'
    return str(value)


def markdown(results):
    lines = []
    for scenario, modes in results.items():
        lines.append(f'### {scenario}\n')
        if scenario == 'recovery_at_scale':
            r = modes['plugin']
            lines.append('| core_job rows | owed pushes | pushed | pass time, s |\n|---|---|---|---|')
            lines.append(f'| {r["core_job_rows"]:,} | {r["owed_pushes"]:,} | {r["pushed"]:,} | {r["pass_seconds"]} |\n')
            continue
        paired = scenario in PAIRED
        rows = PAIRED.get(scenario, ROWS)
        lines.append('| | stock | plugin |' + (' plugin/stock |' if paired else ''))
        lines.append('|---|---|---|' + ('---|' if paired else ''))
        for key, label in rows:
            stock, plugin = modes.get('stock', {}).get(key), modes.get('plugin', {}).get(key)
            if stock is None and plugin is None:
                continue
            row = f'| {label} | {_fmt(stock)} | {_fmt(plugin)} |'
            if paired:
                row += f' {plugin / stock:.3f} |' if stock and plugin else ' – |'
            lines.append(row)
        if modes.get('stock', {}).get('statements') or modes.get('plugin', {}).get('statements'):
            lines.append('\n' + statement_table(modes))
        if modes.get('pairs'):
            count = len(modes['pairs'])
            lines.append(f'\nMedians of {count} interleaved pairs. Plugin/stock ratio per pair:\n')
            lines.append('| | ' + ' | '.join(str(n + 1) for n in range(count))
                         + ' | median | min – max | order-balanced |')
            lines.append('|---|' + '---|' * (count + 3))
            for key, label in rows:
                ratios = [pair[key] for pair in modes['pairs'] if key in pair]
                if ratios:
                    balanced = order_balanced(ratios)
                    lines.append(f'| {label} | ' + ' | '.join(f'{r:.3f}' for r in ratios)
                                 + f' | {statistics.median(ratios):.3f} | {min(ratios):.3f} – {max(ratios):.3f} | '
                                 + (f'{balanced:.3f} |' if balanced else '– |'))
            lines.append('\nPairs 1, 3, 5, … ran stock first, 2, 4, … the plugin first; order-balanced: the geometric '
                         "mean of the two orders' mean ratios (`order_balanced()`).")
        lines.append('')
    return '\n'.join(lines)


def chart(results, path):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cost = results.get('cost')
    if not cost:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    panels = (
        ('throughput_jobs_per_s', 'throughput (jobs/s)'),
        ('enqueue_commit_ms_p50', 'enqueue + commit p50 (ms)'),
        ('commit_to_start_ms_p50', 'commit → start p50 (ms)'),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [cost['stock'][key], cost['plugin'][key]]
        bars = ax.bar(['stock NetBox', 'with netbox-safejobs'], values, color=['#9e9e9e', '#2e7d32'])
        ax.bar_label(bars, fmt='%.2f')
        ax.set_title(title)
    fig.suptitle('netbox-safejobs vs stock NetBox (same run)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--short', action='store_true', help='a few hundred jobs, each fault once')
    parser.add_argument('--scenarios', default=','.join(SCENARIOS), help=f'comma-separated, of {", ".join(SCENARIOS)}')
    parser.add_argument('--jobs', type=int, default=10000, help='jobs of the race scenario (default 10,000)')
    parser.add_argument('--workers', type=int, default=2, help='rqworker processes per mode (default 2)')
    parser.add_argument('--threads', type=int, default=8, help='enqueuing threads of the race scenario')
    parser.add_argument('--hold', type=float, default=0.02, help='seconds a transaction stays open after the enqueue')
    parser.add_argument('--rollback-share', type=float, default=0.1, help='share of transactions rolled back')
    parser.add_argument('--fault-jobs', type=int, default=100, help='jobs per fault scenario')
    parser.add_argument('--crashes', type=int, default=4, help='processes killed between commit and push')
    parser.add_argument('--outage-seconds', type=int, default=5,
                        help='Redis outage: seconds up, then down, then up again while enqueuing')
    parser.add_argument('--chain-cycles', type=int, default=24,
                        help='worker restarts of the chains scenario, one per simulated hour (default 24; 8 with '
                             '--short)')
    parser.add_argument('--outage-jobs', type=int, default=100,
                        help='jobs enqueued across the five outages of redis_outages (default 100)')
    parser.add_argument('--timeout', type=int, default=900, help='seconds to wait for a scenario to settle')
    parser.add_argument('--db-blip-seconds', type=float, default=6, help='PostgreSQL unreachable in pg_blip')
    parser.add_argument('--db-outage-seconds', type=float, default=75,
                        help='PostgreSQL unreachable in pg_outage (longer than stuck_after, 60 s by default)')
    parser.add_argument('--long-job-seconds', type=float, default=100, help='the running job of pg_outage')
    parser.add_argument('--no-recovery-scale', dest='recovery_scale', action='store_false',
                        help='skip the recovery pass timing with 1,000,000 core_job rows')
    parser.add_argument('--core-job-rows', type=int, default=1_000_000)
    parser.add_argument('--owed', type=int, default=1000)
    parser.add_argument('--throughput-jobs', type=int, default=None,
                        help='jobs of the throughput scenario and of the throughput part of the cost scenario '
                             '(default 1,000; 100 with --short)')
    parser.add_argument('--pairs', type=int, default=1,
                        help='run the cost and throughput scenarios this many times, stock and plugin '
                             'interleaved, and report the median, the spread and the ratio of every pair')
    parser.add_argument('--profile', action='store_true',
                        help='throughput scenario: log every statement of every process (one run per mode, not '
                             'timed) and print the per-job profile')
    parser.add_argument('--cprofile', action='store_true',
                        help='with --profile: each work horse profiles itself with cProfile; the merged top '
                             'functions per job go into the JSON results')
    parser.add_argument('--json', help='write the results as JSON to this file')
    parser.add_argument('--markdown', help='write the result tables as Markdown to this file')
    parser.add_argument('--chart', help='write the cost chart (PNG) to this file')
    opts = parser.parse_args(argv)
    if opts.short:
        opts.jobs, opts.fault_jobs, opts.crashes, opts.recovery_scale = 300, 20, 1, False
        opts.chain_cycles = min(opts.chain_cycles, 8)
    opts.cost_jobs = 100 if opts.short else 1000
    opts.throughput_jobs = opts.throughput_jobs or (100 if opts.short else 1000)
    opts.latency_jobs = 30 if opts.short else 200
    opts.scenarios = [s.strip() for s in opts.scenarios.split(',') if s.strip()]
    unknown = set(opts.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f'unknown scenario(s): {", ".join(sorted(unknown))}')
    return opts


def main(argv=None):
    opts = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix='safejobs-harness-'))
    redis = RedisServer(workdir)
    redis.start()
    # The harness process itself must use the private Redis too: set before Django reads its settings.
    os.environ['SAFEJOBS_REDIS_PORT'] = str(redis.port)
    os.environ['SAFEJOBS_REDIS_TASKS_DB'] = '0'
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    started = time.time()
    try:
        ctx = Context(redis=redis, workdir=workdir, workers=opts.workers, db_name=connection.settings_dict['NAME'],
                      redis_db=0)
        results = run(opts, ctx)
    finally:
        redis.stop()
    header = (f'NetBox {settings.RELEASE.version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, '
              f'{os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30:.0f} GiB; '
              f'{opts.workers} workers; {time.strftime("%Y-%m-%d", time.gmtime(started))}; '
              f'{round(time.time() - started)} s')
    text = markdown(results)
    print(f'\n{header}\n\n{text}')
    if opts.markdown:
        Path(opts.markdown).write_text(f'{header}\n\n{text}')
    if opts.json:
        Path(opts.json).write_text(json.dumps({'header': header, 'results': results}, indent=2, default=str))
    if opts.chart:
        chart(results, opts.chart)
    broken = broken_guarantees(results)
    if broken:
        print('PLUGIN GUARANTEE BROKEN:\n  ' + '\n  '.join(broken))
        print(f'worker logs and runs files kept in {workdir}')
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print('plugin guarantees held in every scenario')
    return 0


if __name__ == '__main__':
    sys.exit(main())

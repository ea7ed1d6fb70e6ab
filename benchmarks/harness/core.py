"""
What every scenario stands on: the two modes and their plugin settings, the guarantees the exit status depends on, the
harness's ``Context`` (its Redis server, work directory and the environment of its NetBox processes), the supervised
``WorkerPool`` of rqworker processes, and the ``@scenario`` registry a full run and ``--scenarios`` read.
"""

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netbox_safejobs.testing.fixtures import netbox_command
from netbox_safejobs.testing.processes import RedisServer, child_pids, kill_pids, stop_process_group

__all__ = (
    'GUARANTEES',
    'HARNESS_TAG',
    'MODES',
    'PLUGIN_CONFIG',
    'QUEUES',
    'ROOT',
    'SCENARIOS',
    'STOCK_CONFIG',
    'Context',
    'WorkerPool',
    'private_redis',
    'run_in_order',
    'scenario',
    'use_redis',
)

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')


# The repository: put on the NetBox processes' PYTHONPATH, for benchmarks.runners.
ROOT = Path(__file__).resolve().parent.parent.parent

STOCK_CONFIG = {
    'dispatch_on_commit': False, 'worker_guard': False, 'worker_loop': False, 'stuck_job_detection': False,
}
# The plugin's workers look for a missing row for 0.1 + 0.1 + 0.2 + 0.3 + 0.5 = 1.2 s instead of 6 s, so that the
# scenario that deletes rows in bulk does not spend minutes waiting. The same base delay also paces reconnections to
# the database: 12 of them (at most 2 s apart, 13.3 s in all) keep the default's budget (8, 11.5 s). Everything else
# is the default.
PLUGIN_CONFIG = {'lookup_base_delay': 0.1, 'database_retries': 12}
MODES = ('stock', 'plugin')
# Name -> scenario, filled by @scenario as the package imports its family modules, then put in the order of a full
# run (``run_in_order``).
SCENARIOS = {}
QUEUES = ('high', 'default', 'low')
# The prefix of what the harness creates besides its jobs (tags, a webhook, an event rule, a user): cleanup() removes
# the tags.
HARNESS_TAG = 'safejobs-harness-'

# Guarantees the plugin must keep in every scenario (the exit status depends on them).
GUARANTEES = ('lost', 'ghost_rows', 'resurrected', 'duplicate_runs', 'caller_exceptions', 'callers_broken',
              'shared_sessions', 'killed_transactions_committed', 'live_jobs_closed', 'extra_next_runs',
              'requests_failed', 'webhooks_lost', 'webhooks_twice', 'webhooks_rolled_back_sent', 'runs_lost',
              'unwatched', 'extra_future_runs', 'chains_broken', 'chain_rows_left_running')


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
# Written by benchmarks/harness/: the configuration in SAFEJOBS_HARNESS_CONFIGURATION, its database reached
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
    does not restart such a worker), and the end of its log printed unless ``quiet`` (the explorer stops workers on
    purpose). Burst pools exit when the queues are empty and are not restarted.
    """

    RESTART_DELAY = 1.0

    def __init__(self, ctx, mode, runs_file, count=None, extra_config=None, burst=False, db_port=None, env=None,
                 quiet=False):
        self.ctx, self.mode, self.quiet = ctx, mode, quiet
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
                if not self.quiet:
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

    def _unsupervise(self):
        self._stopping.set()
        if self._supervisor:
            self._supervisor.join()

    def stop(self):
        self._unsupervise()
        stop_process_group(self.processes)

    def terminate(self, grace=30):
        """
        Stop as ``kill <pid>`` does: SIGTERM to each worker alone (RQ's warm shutdown lets the job running end first).
        Returns the pids of the workers still running ``grace`` seconds later, which are then SIGKILLed with their
        work horses: a worker that does not stop on SIGTERM.
        """
        self._unsupervise()
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        stuck = []
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stuck.append(process.pid)
                kill_pids([*child_pids(process.pid), process.pid])
                process.wait()
        return stuck

    def kill(self, forget=False):
        """
        SIGKILL every worker and its work horse (RQ runs a horse in a session of its own): a host lost, or an OOM kill
        of the whole service; returns the horses' pids. ``forget``: then what RQ does once a dead worker's
        registration expires (``worker_ttl``, 420 s by default): its key is removed, so that no registration vouches
        for the jobs it ran.
        """
        self._unsupervise()
        pids = [p.pid for p in self.processes]
        horses = [child for pid in pids for child in child_pids(pid)]
        kill_pids([*pids, *horses])
        for process in self.processes:
            process.wait()
        if forget:
            from django_rq import get_connection
            from rq import worker_registration
            from rq.worker import Worker

            connection = get_connection('default')
            for worker in Worker.all(connection=connection):
                if worker.pid in pids:
                    worker_registration.unregister(worker)
                    connection.delete(worker.key)
        return horses

    def wait(self, timeout=600):
        for p in self.processes:
            p.wait(timeout=timeout)


def private_redis(prefix):
    """A work directory of its own (``prefix``) and a private Redis server started in it; the caller stops it."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    redis = RedisServer(workdir)
    redis.start()
    return workdir, redis


def use_redis(port):
    """Point this process's RQ queues at the Redis on 127.0.0.1:``port``: before Django reads its settings."""
    os.environ['SAFEJOBS_REDIS_PORT'] = str(port)
    os.environ['SAFEJOBS_REDIS_TASKS_DB'] = '0'


def scenario(function):
    """
    Register ``function(ctx, mode, opts, runs_file)`` (which returns the outcome as a dict) as the scenario named
    after it, without the ``scenario_`` prefix: ``--scenarios`` accepts it and a full run includes it.
    """
    SCENARIOS[function.__name__.removeprefix('scenario_')] = function
    return function


def run_in_order(names):
    """
    Put ``SCENARIOS`` in the order of a full run: ``names`` first, in that order, then any scenario they leave out, in
    the order it was registered.
    """
    registered = dict(SCENARIOS)
    SCENARIOS.clear()
    SCENARIOS.update((name, registered.pop(name)) for name in names)
    SCENARIOS.update(registered)

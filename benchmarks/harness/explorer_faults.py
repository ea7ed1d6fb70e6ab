"""
The explorer's faults, one method per name of ``schedules.FAULTS``: each starts its fault, keeps it the step's
seconds and heals it, recording into the history when it happened and what it hit. Faults run in threads of their own
and may overlap; what two of them share (the Redis server, the worker pool) is changed under a lock.
"""

import os
import signal
import threading
import time

from netbox_safejobs.testing.processes import child_pids, kill_pids

from .core import WorkerPool
from .redis_faults import ROTATED_SETTINGS, ROTATED_SETTINGS_TEXT
from .support import read_runs

__all__ = (
    'Faults',
)

# How long the added worker may take to end its job and exit on SIGTERM (a PostgreSQL outage may hold its end).
ADDED_WORKER_GRACE = 60
# How long a horse fault waits for a job to be running in a work horse.
HORSE_WAIT = 5.0


class Faults:
    def __init__(self, rig):
        self.rig = rig
        self.redis_lock = threading.Lock()
        self.pool_lock = threading.Lock()

    def run(self, step, started):
        """Run ``step`` (a fault) now; ``started``: the monotonic time the window began."""
        at = time.monotonic() - started
        try:
            note = getattr(self, step.action)(step) or ''
        except Exception as e:
            note = f'failed: {type(e).__name__}: {e}'[:200]
        with self.rig.history.lock:
            self.rig.history.faults.append((step.action, round(at, 2), round(time.monotonic() - started - at, 2),
                                            note))

    # -- Redis --------------------------------------------------------------------------------------------------

    def _redis(self):
        import redis

        return redis.Redis(host='127.0.0.1', port=self.rig.ctx.redis.port, socket_timeout=5)

    def _restart_redis(self, keep_snapshot=False):
        server = self.rig.ctx.redis
        with self.redis_lock:
            server.stop()
            if not keep_snapshot:
                (server.dir / 'dump.rdb').unlink(missing_ok=True)
            server.start()
            (server.dir / 'dump.rdb').unlink(missing_ok=True)

    def redis_restart(self, step):
        with self.redis_lock:
            self.rig.ctx.redis.stop()
        time.sleep(step.seconds)
        self._restart_redis()

    def redis_flush(self, step):
        self._redis().flushall()

    def redis_snapshot(self, step):
        with self.redis_lock:
            self._redis().save()
        time.sleep(step.seconds)
        self._restart_redis(keep_snapshot=True)

    def redis_silent(self, step):
        self.rig.redis_gate.silence()
        time.sleep(step.seconds)
        self.rig.redis_gate.up()

    # -- PostgreSQL ---------------------------------------------------------------------------------------------

    def pg_blip(self, step):
        self.rig.pg_gate.down()
        time.sleep(step.seconds)
        self.rig.pg_gate.up()

    pg_long = pg_blip

    def pg_terminate(self, step):
        from django.db import connection

        ports = self.rig.pg_gate.upstream_ports()
        with connection.cursor() as cursor:
            cursor.execute('SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE client_port = ANY(%s) '
                           "AND client_addr = '127.0.0.1' AND pid <> pg_backend_pid()", [ports])
            return f'{cursor.fetchone()[0]} backends'

    # -- work horses and workers --------------------------------------------------------------------------------

    def _horses(self):
        """{pid of a work horse inside a harness job's run() (not yet at its end): its worker's Popen}."""
        from .explorer_checks import read_ends

        pids = {}
        read_runs(self.rig.runs_file, pids)
        ended = read_ends(self.rig.runs_file)
        running = {pid for job, pid in pids.items() if job not in ended and os.path.exists(f'/proc/{pid}')}
        return {pid: worker for worker in self.rig.pool.processes if worker.poll() is None
                for pid in child_pids(worker.pid) if pid in running}

    def _busy(self):
        """(horse pid, its worker) of a job running now, waiting a little for one (jobs are short); or None."""
        deadline = time.monotonic() + HORSE_WAIT
        while not (horses := self._horses()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not horses:
            return None
        pids = sorted(horses)
        pid = pids[int(time.monotonic() * 1000) % len(pids)]
        return pid, horses[pid]

    def _kill_horse(self, sig):
        busy = self._busy()
        if busy is None:
            return 'no horse running'
        kill_pids([busy[0]], sig)
        return f'horse {busy[0]}'

    def horse_kill(self, step):
        return self._kill_horse(signal.SIGKILL)

    def horse_term(self, step):
        return self._kill_horse(signal.SIGTERM)

    def _worker(self):
        """A worker running a job (the fault is about work in flight), else any live one, or None."""
        busy = self._busy()
        if busy is not None:
            return busy[1]
        processes = [p for p in self.rig.pool.processes if p.poll() is None]
        return processes[int(time.monotonic() * 1000) % len(processes)] if processes else None

    def worker_kill(self, step):
        """A host lost: the worker and its work horse SIGKILLed; the pool's supervisor starts it again."""
        with self.pool_lock:
            worker = self._worker()
            if worker is None:
                return 'no worker'
            kill_pids([worker.pid, *child_pids(worker.pid)])
        return f'worker {worker.pid}'

    def worker_term(self, step):
        with self.pool_lock:
            worker = self._worker()
            if worker is None:
                return 'no worker'
            os.kill(worker.pid, signal.SIGTERM)
        return f'worker {worker.pid}'

    def key_rotation(self, step):
        """Every worker restarted (SIGTERM, then started again) with a new SECRET_KEY and the old one as fallback."""
        directory = self.rig.ctx.workdir / 'rotated'
        directory.mkdir(exist_ok=True)
        (directory / f'{ROTATED_SETTINGS}.py').write_text(ROTATED_SETTINGS_TEXT)
        with self.pool_lock:
            pool = self.rig.pool
            pool.env = dict(pool.env, DJANGO_SETTINGS_MODULE=ROTATED_SETTINGS,
                            PYTHONPATH=os.pathsep.join([str(directory), pool.env['PYTHONPATH']]))
            for process in pool.processes:
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGTERM)

    def worker_added(self, step):
        """A third worker for a while, then stopped as a service manager stops it."""
        pool = WorkerPool(self.rig.ctx, self.rig.mode, self.rig.runs_file, count=1, env=self.rig.pool.env, quiet=True)
        time.sleep(step.seconds)
        stuck = pool.terminate(grace=ADDED_WORKER_GRACE)
        with self.rig.history.lock:
            self.rig.sigterm_ignored += stuck

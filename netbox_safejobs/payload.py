"""
The stored push: what the outbox keeps of a job, sealed so that only the plugin's own rows are ever unpickled.

A push is kept as RQ would receive it (the method, the callable and its arguments, pickled), because that is what
must be sent again when the first push fails. For scripts and background API requests the arguments hold a copy of
the user's request, so the blob is

- signed: an HMAC-SHA256 of the pickle with a key derived from NetBox's ``SECRET_KEY`` (Django's ``salted_hmac``,
  with a salt of this module's own), checked before anything is unpickled, against ``SECRET_KEY`` and then each of
  ``SECRET_KEY_FALLBACKS`` (a rotated key), in Django's settings or NetBox's ``configuration.py``. A blob written by
  anyone else, or truncated, raises ``BadPayload`` and is never unpickled. The first release (0.1.0) stored pushes
  unsigned; migration 0006 signs those it finds;
- erased as soon as it is not needed: at the worker's claim. A periodic job keeps only the keyword arguments of its
  next run (``seal_next_run``), which NetBox's own ``handle()`` passes on, until its run ends.
"""

import hmac
import pickle

from django.utils.crypto import salted_hmac

from . import compat

__all__ = (
    'BadPayload',
    'NextRun',
    'Push',
    'fallback_keys',
    'is_signed',
    'runner_path',
    'seal',
    'seal_next_run',
    'unseal',
)

def runner_path(runner):
    """
    The dotted path of a JobRunner class, as the stored push, the dispatch row and each event name it (a path given
    as text is returned as it is; ``None`` gives '').
    """
    if runner is None:
        return ''
    if isinstance(runner, str):
        return runner
    return f'{runner.__module__}.{runner.__qualname__}'


_SALT = 'netbox_safejobs.payload.v1'
_MAC_SIZE = 32  # SHA-256


class BadPayload(Exception):
    """A stored blob that is not the plugin's own: bad signature, truncated, or not a push."""


class Push(tuple):
    """``(method, args, kwargs)``: ``queue.<method>(*args, **kwargs)``."""

    __slots__ = ()

    def __new__(cls, method, args, kwargs):
        return super().__new__(cls, (method, tuple(args), dict(kwargs)))

    method = property(lambda self: self[0])
    args = property(lambda self: self[1])
    kwargs = property(lambda self: self[2])


class NextRun(dict):
    """The keyword arguments NetBox's ``handle()`` passes to the next run of a periodic job."""


def _mac(data, secret=None):
    return salted_hmac(_SALT, data, secret=secret, algorithm='sha256').digest()


def fallback_keys():
    """
    The rotated keys a push may be signed with: Django's ``SECRET_KEY_FALLBACKS``, and the same setting in NetBox's
    ``configuration.py``, where a NetBox operator puts every other setting and which NetBox does not pass on to Django
    (only ``local_settings.py`` does). Without the second, a rotation done there made every owed push unreadable.
    """
    from django.conf import settings

    keys = list(getattr(settings, 'SECRET_KEY_FALLBACKS', None) or ())
    configured = getattr(compat.netbox_configuration(), 'SECRET_KEY_FALLBACKS', None) or ()
    return keys + [key for key in configured if key not in keys]


def _signed(mac, body):
    """
    Whether ``mac`` signs ``body`` under ``SECRET_KEY`` or one of the fallback keys: pushes stored before a key
    rotation done the way Django documents it (the new key, the old one among the fallbacks) are still ours.
    """
    if hmac.compare_digest(mac, _mac(body)):
        return True
    return any(hmac.compare_digest(mac, _mac(body, secret=key)) for key in fallback_keys())


def seal(push):
    """A ``Push`` (or ``NextRun``) as signed bytes."""
    if isinstance(push, NextRun):
        body = pickle.dumps(('next', dict(push)), protocol=pickle.HIGHEST_PROTOCOL)
    else:
        body = pickle.dumps(('push', push.method, push.args, push.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    return _mac(body) + body


def seal_next_run(kwargs):
    """What a periodic job keeps through its run: its keyword arguments, without the job itself."""
    return seal(NextRun({k: v for k, v in kwargs.items() if k not in ('job', 'job_id')}))


def is_signed(blob):
    """Whether ``blob`` carries a valid signature (nothing is unpickled)."""
    data = bytes(blob) if blob is not None else b''
    return len(data) > _MAC_SIZE and _signed(data[:_MAC_SIZE], data[_MAC_SIZE:])


def unseal(blob):
    """The ``Push`` or ``NextRun`` sealed in ``blob``; ``BadPayload`` when the blob is not ours or is damaged."""
    if blob is None:
        raise BadPayload('no stored push')
    data = bytes(blob)
    if len(data) <= _MAC_SIZE:
        raise BadPayload('stored push truncated')
    mac, body = data[:_MAC_SIZE], data[_MAC_SIZE:]
    if not _signed(mac, body):
        raise BadPayload('stored push has a bad signature (not written by this installation, or altered, or signed '
                         'with a SECRET_KEY that is no longer in SECRET_KEY or SECRET_KEY_FALLBACKS)')
    try:
        value = pickle.loads(body)
    except Exception as e:
        # Signed but unreadable: a runner class renamed or removed since the push was stored.
        raise BadPayload(f'stored push cannot be read: {type(e).__name__}: {e}') from e
    if value[0] == 'push' and len(value) == 4:
        return Push(value[1], value[2], value[3])
    if value[0] == 'next' and len(value) == 2:
        return NextRun(value[1])
    raise BadPayload('stored push has an unknown format')

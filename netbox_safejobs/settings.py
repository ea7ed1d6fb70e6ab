"""
The plugin's settings: their defaults, their validation, and one typed object to read them from.

This is the only module that knows setting names. Everything else asks ``get_settings()``.
"""

import functools
from dataclasses import dataclass, fields
from numbers import Real

from django.core.exceptions import ImproperlyConfigured

__all__ = (
    'BACKOFF_SCHEDULES',
    'DEFAULT_SETTINGS',
    'PLUGIN_NAME',
    'RETIRED_SETTINGS',
    'SafeJobsSettings',
    'connect_signals',
    'get_settings',
    'retired_keys_warnings',
    'validate_settings',
)

PLUGIN_NAME = 'netbox_safejobs'

BACKOFF_SCHEDULES = ('fibonacci', 'exponential')

DEFAULT_SETTINGS = {
    # Patch switches: each of the plugin's patches of NetBox can be turned off on its own.
    'dispatch_on_commit': True,
    'worker_guard': True,
    # Worker guard: how long to look for a Job row that is not (yet) visible.
    'lookup_retries': 5,
    'lookup_base_delay': 0.5,
    'backoff_schedule': 'fibonacci',
    'lookup_max_wait': 30.0,
    # Worker guard: how many times to reconnect and retry when the database itself fails.
    'database_retries': 8,
    # The loop every rqworker runs beside its work: the relay of owed pushes, the worker's heartbeat, stuck jobs.
    'worker_loop': True,
    'relay_interval': 1.0,
    'unknown_push_age': 10,
    'heartbeat_interval': 10,
    'stuck_job_detection': True,
    'stuck_after': 60,
    'worker_reconnect_interval': 0.5,
    # Retry events: days to keep them (0 keeps them forever).
    'event_retention_days': 90,
}


@dataclass(frozen=True)
class SafeJobsSettings:
    dispatch_on_commit: bool
    worker_guard: bool
    lookup_retries: int
    lookup_base_delay: float
    backoff_schedule: str
    lookup_max_wait: float
    database_retries: int
    worker_loop: bool
    relay_interval: float
    unknown_push_age: int
    heartbeat_interval: int
    stuck_job_detection: bool
    stuck_after: int
    worker_reconnect_interval: float
    event_retention_days: int


def _bool(key, value):
    if not isinstance(value, bool):
        raise _error(key, value, 'True or False')
    return value


def _int(minimum, maximum=None):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum
        ):
            allowed = f'an integer from {minimum} to {maximum}' if maximum is not None else f'an integer >= {minimum}'
            raise _error(key, value, allowed)
        return value
    return check


def _seconds(minimum, maximum):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, Real) or not minimum <= value <= maximum:
            raise _error(key, value, f'a number of seconds from {minimum} to {maximum}')
        return float(value)
    return check


def _choice(choices):
    def check(key, value):
        if value not in choices:
            raise _error(key, value, 'one of ' + ', '.join(repr(c) for c in choices))
        return value
    return check


def _error(key, value, allowed):
    return ImproperlyConfigured(
        f"PLUGINS_CONFIG['{PLUGIN_NAME}']['{key}'] is {value!r}; it must be {allowed}."
    )


_VALIDATORS = {
    'dispatch_on_commit': _bool,
    'worker_guard': _bool,
    'lookup_retries': _int(0, 50),
    'lookup_base_delay': _seconds(0.001, 60),
    'backoff_schedule': _choice(BACKOFF_SCHEDULES),
    'lookup_max_wait': _seconds(0, 3600),
    'database_retries': _int(0, 50),
    'worker_loop': _bool,
    'relay_interval': _seconds(0.1, 60),
    'unknown_push_age': _int(1, 3600),
    'heartbeat_interval': _int(1, 300),
    'stuck_job_detection': _bool,
    'stuck_after': _int(10, 86400),
    'worker_reconnect_interval': _seconds(0.1, 60),
    'event_retention_days': _int(0, 36500),
}

assert set(_VALIDATORS) == set(DEFAULT_SETTINGS) == {f.name for f in fields(SafeJobsSettings)}

# Keys of earlier releases that no longer mean anything: accepted, so that an operator's configuration keeps working,
# and named in one warning at start-up with what replaced them.
RETIRED_SETTINGS = {
    'recovery_enabled': 'owed pushes are sent by the relay in every rqworker (see worker_loop); no system job is '
                        'needed',
    'recovery_interval': 'the relay in every rqworker sends owed pushes every relay_interval seconds',
    'recovery_min_age': 'a failed push is owed at once; a push whose outcome is unknown is owed after '
                        'unknown_push_age seconds, by the database clock',
    'stuck_job_grace': 'a job is stuck when its worker has not heartbeated for stuck_after seconds',
}


def validate_settings(config):
    """
    Check a plugin configuration dict (defaults already merged in by NetBox) and return it as a
    ``SafeJobsSettings``. Raise ``ImproperlyConfigured`` naming the key, the value and what is allowed.
    """
    unknown = sorted(set(config) - set(DEFAULT_SETTINGS) - set(RETIRED_SETTINGS))
    if unknown:
        raise ImproperlyConfigured(
            f"PLUGINS_CONFIG['{PLUGIN_NAME}'] has unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"known keys are: {', '.join(sorted(DEFAULT_SETTINGS))}."
        )
    values = {}
    for key, default in DEFAULT_SETTINGS.items():
        values[key] = _VALIDATORS[key](key, config.get(key, default))
    # A worker's heartbeat is written by its loop, on the loop's ticks (one every relay_interval): a beat due between
    # two ticks waits for the next one, so two beats of a live worker are up to heartbeat_interval + relay_interval
    # apart. A tick slower than the beat would make every live worker's beat late.
    if values['relay_interval'] > values['heartbeat_interval']:
        raise ImproperlyConfigured(
            f"PLUGINS_CONFIG['{PLUGIN_NAME}']['relay_interval'] is {values['relay_interval']:g}; it must be at most "
            f"heartbeat_interval ({values['heartbeat_interval']} seconds): the heartbeat is written on the worker "
            f"loop's ticks, one every relay_interval."
        )
    # Three missed heartbeats before a worker counts as dead: one late beat (a busy host, a slow query) is not death.
    beat = values['heartbeat_interval'] + values['relay_interval']
    if values['stuck_after'] < 3 * beat:
        raise _error('stuck_after', values['stuck_after'],
                     f'at least 3 x (heartbeat_interval + relay_interval) ({3 * beat:g} seconds): three heartbeats '
                     f'of a live worker, each written up to one relay_interval after it is due')
    return SafeJobsSettings(**values)


def retired_keys_warnings(config):
    """One line per retired key the configuration still sets, naming what replaced it."""
    return [
        f"PLUGINS_CONFIG['{PLUGIN_NAME}']['{key}'] is no longer used and is ignored: {RETIRED_SETTINGS[key]}."
        for key in sorted(set(config) & set(RETIRED_SETTINGS))
    ]


@functools.cache
def get_settings():
    """The validated settings. Cached; dropped whenever Django's settings change (``override_settings``)."""
    from django.conf import settings

    return validate_settings(settings.PLUGINS_CONFIG.get(PLUGIN_NAME, {}))


def _forget(**kwargs):
    get_settings.cache_clear()


def connect_signals():
    from django.core.signals import setting_changed

    setting_changed.connect(_forget, dispatch_uid='netbox_safejobs.settings')

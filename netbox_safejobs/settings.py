"""
The plugin's settings: their defaults, their validation, and one typed object to read them from.

This is the only module that knows setting names. Everything else asks ``get_settings()``.
"""

from dataclasses import dataclass, fields
from numbers import Real

from django.core.exceptions import ImproperlyConfigured

__all__ = (
    'BACKOFF_SCHEDULES',
    'DEFAULT_SETTINGS',
    'PLUGIN_NAME',
    'SafeJobsSettings',
    'connect_signals',
    'get_settings',
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
    'database_retries': 3,
    # Recovery pass: owed pushes, tasks lost by Redis, jobs stuck in "running".
    'recovery_enabled': True,
    'recovery_interval': 5,
    'recovery_min_age': 60,
    'stuck_job_detection': True,
    'stuck_job_grace': 900,
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
    recovery_enabled: bool
    recovery_interval: int
    recovery_min_age: int
    stuck_job_detection: bool
    stuck_job_grace: int
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
    'recovery_enabled': _bool,
    'recovery_interval': _int(1, 1440),
    'recovery_min_age': _int(1, 86400),
    'stuck_job_detection': _bool,
    'stuck_job_grace': _int(60, 7 * 86400),
    'event_retention_days': _int(0, 36500),
}

assert set(_VALIDATORS) == set(DEFAULT_SETTINGS) == {f.name for f in fields(SafeJobsSettings)}


def validate_settings(config):
    """
    Check a plugin configuration dict (defaults already merged in by NetBox) and return it as a
    ``SafeJobsSettings``. Raise ``ImproperlyConfigured`` naming the key, the value and what is allowed.
    """
    unknown = sorted(set(config) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ImproperlyConfigured(
            f"PLUGINS_CONFIG['{PLUGIN_NAME}'] has unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"known keys are: {', '.join(sorted(DEFAULT_SETTINGS))}."
        )
    values = {}
    for key, default in DEFAULT_SETTINGS.items():
        values[key] = _VALIDATORS[key](key, config.get(key, default))
    return SafeJobsSettings(**values)


_cached = None


def get_settings():
    """The validated settings. Cached; dropped whenever Django's settings change (``override_settings``)."""
    global _cached
    if _cached is None:
        from django.conf import settings

        _cached = validate_settings(settings.PLUGINS_CONFIG.get(PLUGIN_NAME, {}))
    return _cached


def _forget(**kwargs):
    global _cached
    _cached = None


def connect_signals():
    from django.core.signals import setting_changed

    setting_changed.connect(_forget, dispatch_uid='netbox_safejobs.settings')

"""Settings validation: every bad value fails with an error naming the key, the value and what is allowed."""

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase, override_settings

from netbox_safejobs.settings import DEFAULT_SETTINGS, SafeJobsSettings, get_settings, validate_settings

BAD_VALUES = {
    'dispatch_on_commit': ('yes', 'True or False'),
    'worker_guard': (1, 'True or False'),
    'lookup_retries': (-1, 'an integer from 0 to 50'),
    'lookup_base_delay': (0, 'a number of seconds from 0.001 to 60'),
    'backoff_schedule': ('linear', "one of 'fibonacci', 'exponential'"),
    'lookup_max_wait': ('30', 'a number of seconds from 0 to 3600'),
    'database_retries': (2.5, 'an integer from 0 to 50'),
    'worker_loop': (None, 'True or False'),
    'relay_interval': (0, 'a number of seconds from 0.1 to 60'),
    'unknown_push_age': (True, 'an integer from 1 to 3600'),
    'heartbeat_interval': (0.5, 'an integer from 1 to 300'),
    'stuck_job_detection': ('off', 'True or False'),
    'stuck_after': (5, 'an integer from 10 to 86400'),
    'worker_reconnect_interval': (61, 'a number of seconds from 0.1 to 60'),
    'event_retention_days': (-5, 'an integer from 0 to 36500'),
}


class SettingsValidationTest(SimpleTestCase):

    def test_every_key_has_a_bad_value_test(self):
        self.assertEqual(set(BAD_VALUES), set(DEFAULT_SETTINGS))

    def test_defaults_are_valid(self):
        settings = validate_settings({})
        self.assertIsInstance(settings, SafeJobsSettings)
        self.assertEqual(settings.lookup_retries, 5)
        self.assertEqual(settings.lookup_base_delay, 0.5)
        self.assertEqual(settings.backoff_schedule, 'fibonacci')
        self.assertEqual(settings.event_retention_days, 90)

    def test_bad_values(self):
        for key, (value, allowed) in BAD_VALUES.items():
            with self.subTest(key=key):
                with self.assertRaises(ImproperlyConfigured) as cm:
                    validate_settings({**DEFAULT_SETTINGS, key: value})
                message = str(cm.exception)
                self.assertIn(f"['{key}']", message)
                self.assertIn(repr(value), message)
                self.assertIn(allowed, message)

    def test_stuck_after_needs_three_heartbeats(self):
        with self.assertRaisesMessage(ImproperlyConfigured, "['stuck_after'] is 20; it must be at least 3 x "
                                                            "(heartbeat_interval + relay_interval) (33 seconds)"):
            validate_settings({'heartbeat_interval': 10, 'stuck_after': 20})
        # A beat is written on the loop's tick after it is due: up to one relay_interval late.
        with self.assertRaisesMessage(ImproperlyConfigured, '(36 seconds)'):
            validate_settings({'heartbeat_interval': 10, 'relay_interval': 2, 'stuck_after': 35})
        self.assertEqual(validate_settings({'heartbeat_interval': 10, 'stuck_after': 33}).stuck_after, 33)

    def test_relay_interval_no_longer_than_the_heartbeat(self):
        """The heartbeat is written on the loop's ticks: a slower tick makes every live worker's beat late."""
        with self.assertRaisesMessage(ImproperlyConfigured, "['relay_interval'] is 15; it must be at most "
                                                            'heartbeat_interval (10 seconds)'):
            validate_settings({'heartbeat_interval': 10, 'relay_interval': 15, 'stuck_after': 600})
        # Near stuck_after: refused by the rule of three heartbeats, naming both keys.
        with self.assertRaisesMessage(ImproperlyConfigured, 'heartbeat_interval + relay_interval'):
            validate_settings({'heartbeat_interval': 20, 'relay_interval': 19, 'stuck_after': 60})
        self.assertEqual(validate_settings({'heartbeat_interval': 10, 'relay_interval': 10,
                                            'stuck_after': 60}).relay_interval, 10)

    def test_retired_keys_still_accepted_with_one_warning_each(self):
        """An operator's configuration of an earlier release keeps working; start-up names what replaced each key."""
        old = {'recovery_enabled': False, 'recovery_interval': 5, 'recovery_min_age': 60, 'stuck_job_grace': 900}
        settings = validate_settings(old)
        self.assertFalse(hasattr(settings, 'recovery_min_age'))
        config = apps.get_app_config('netbox_safejobs')
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': old}):
            with self.assertLogs('netbox_safejobs.config', level='WARNING') as logs:
                config.ready()
        self.assertEqual(len(logs.output), 4)
        self.assertIn("['recovery_min_age'] is no longer used", logs.output[2])
        self.assertIn('unknown_push_age', logs.output[2])
        self.assertIn('stuck_after', logs.output[3])

    def test_unknown_key(self):
        with self.assertRaisesMessage(ImproperlyConfigured, "unknown key(s) 'lookup_retry'"):
            validate_settings({'lookup_retry': 3})

    def test_numbers_accepted(self):
        settings = validate_settings(
            {'lookup_base_delay': 1, 'lookup_max_wait': 2.5, 'backoff_schedule': 'exponential'}
        )
        self.assertEqual(settings.lookup_base_delay, 1.0)
        self.assertEqual(settings.lookup_max_wait, 2.5)
        self.assertEqual(settings.backoff_schedule, 'exponential')

    def test_ready_rejects_bad_configuration(self):
        """ready() runs the same validation at start-up, so a typo stops NetBox instead of a worker later."""
        config = apps.get_app_config('netbox_safejobs')
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': {'backoff_schedule': 'random'}}):
            with self.assertRaisesMessage(ImproperlyConfigured, "['backoff_schedule'] is 'random'"):
                config.ready()

    def test_get_settings_follows_override_settings(self):
        with override_settings(PLUGINS_CONFIG={'netbox_safejobs': {'lookup_retries': 2}}):
            self.assertEqual(get_settings().lookup_retries, 2)
        self.assertEqual(get_settings().lookup_retries, DEFAULT_SETTINGS['lookup_retries'])

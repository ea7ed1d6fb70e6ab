"""The plugin loads into NetBox: app registry, plugin registry, /api/status/."""

from django.apps import apps
from django.urls import reverse
from utilities.testing import APITestCase

import netbox_safejobs
from netbox_safejobs import compat


class PluginLoadTest(APITestCase):

    def test_app_config(self):
        config = apps.get_app_config('netbox_safejobs')
        self.assertIsInstance(config, netbox_safejobs.SafeJobsConfig)
        self.assertEqual(config.base_url, 'safejobs')
        self.assertEqual(config.min_version, '4.2.0')
        self.assertEqual(config.version, netbox_safejobs.__version__)

    def test_in_plugin_registry(self):
        self.assertIn('netbox_safejobs', compat.installed_plugins())

    def test_api_status_lists_plugin(self):
        response = self.client.get(reverse('api-status'), **self.header)
        self.assertHttpStatus(response, 200)
        self.assertEqual(response.json()['plugins'].get('netbox_safejobs'), netbox_safejobs.__version__)

    def test_defaults_merged_into_plugins_config(self):
        from django.conf import settings

        from netbox_safejobs.settings import DEFAULT_SETTINGS

        config = settings.PLUGINS_CONFIG['netbox_safejobs']
        for key in DEFAULT_SETTINGS:
            self.assertIn(key, config)

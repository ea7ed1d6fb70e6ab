"""The plugin loads into NetBox: app registry, plugin registry, /api/status/; its runtime path is its own."""

import ast
from pathlib import Path

from django.apps import apps
from django.test import SimpleTestCase
from django.urls import reverse
from utilities.testing import APITestCase

import netbox_safejobs
from netbox_safejobs.testing.fixtures import installed_plugins


class PluginLoadTest(APITestCase):

    def test_app_config(self):
        config = apps.get_app_config('netbox_safejobs')
        self.assertIsInstance(config, netbox_safejobs.SafeJobsConfig)
        self.assertEqual(config.base_url, 'safejobs')
        self.assertEqual(config.min_version, '4.2.0')
        self.assertEqual(config.version, netbox_safejobs.__version__)

    def test_in_plugin_registry(self):
        self.assertIn('netbox_safejobs', installed_plugins())

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


class RuntimePathTest(SimpleTestCase):
    """The support package for tests, benchmarks and the demo is never imported by the plugin's runtime path."""

    PACKAGE = Path(netbox_safejobs.__file__).resolve().parent
    # Run on demand only: the demo command (and so every management command, which Django may import) may use it.
    ALLOWED = ('testing', 'demo.py', 'management')

    def imported_modules(self, path):
        """The absolute names of the modules a file imports (relative imports resolved)."""
        package = ['netbox_safejobs', *path.relative_to(self.PACKAGE).parent.parts]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = '.'.join(base + ([node.module] if node.module else []))
                yield module
                yield from (f'{module}.{alias.name}' for alias in node.names)

    def test_no_runtime_module_imports_the_support_package(self):
        offenders = []
        for path in sorted(self.PACKAGE.rglob('*.py')):
            if path.relative_to(self.PACKAGE).parts[0] in self.ALLOWED:
                continue
            for name in self.imported_modules(path):
                if name == 'netbox_safejobs.testing' or name.startswith('netbox_safejobs.testing.'):
                    offenders.append(f'{path.relative_to(self.PACKAGE)}: {name}')
        self.assertEqual(offenders, [])

    def test_the_check_sees_relative_imports(self):
        demo = self.PACKAGE / 'demo.py'
        self.assertIn('netbox_safejobs.testing.fixtures', set(self.imported_modules(demo)))

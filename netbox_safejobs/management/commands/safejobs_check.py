"""``netbox safejobs_check``: the installation's health, for an operator or a monitoring system."""

import json

from django.core.management.base import BaseCommand

from netbox_safejobs.health import check

__all__ = (
    'Command',
)


class Command(BaseCommand):
    help = (
        'Check what around netbox-safejobs would lose or stall jobs: workers without the plugin, mixed releases, '
        'unapplied migrations, Redis eviction and persistence, clock skew, the backlog of owed pushes and stuck '
        'jobs, the settings. Exit status 0 ok, 1 warning, 2 error; each finding names its fix.'
    )
    # It must answer when PostgreSQL does not: Django's system checks import NetBox's URLs, and NetBox 4.2's core
    # views query the database at import, so the command died with a traceback instead of reporting the database.
    # The checks it needs (settings, migrations, database) are its own.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument('--format', choices=('text', 'json'), default='text',
                            help='text for people (default), json for monitoring.')

    def handle(self, *args, format='text', **options):
        report = check()
        if format == 'json':
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.stdout.write(report.as_text())
        raise SystemExit(report.exit_code)

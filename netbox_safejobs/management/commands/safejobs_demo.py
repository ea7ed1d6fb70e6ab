"""``netbox safejobs_demo``: provoke every kind of retry event on a running instance."""

from django.core.management.base import BaseCommand, CommandError

from netbox_safejobs.demo import run_demo


class Command(BaseCommand):
    help = (
        'Provoke every kind of netbox-safejobs retry event (retry, found after retry, gave up, database error, '
        'duplicate skipped, dispatch failed, recovered, stuck job errored, row deleted mid-run, saved task rejected, '
        'stopped by operator, webhook failed, adopted, not adopted, chain merged) with small demo jobs, so that they '
        'can be seen on the Retry events page. Needs a running rqworker.'
    )

    def add_arguments(self, parser):
        parser.add_argument('--wait', type=int, default=60, help='seconds to wait for the worker (default 60)')

    def handle(self, *args, wait=60, **options):
        counts, missing = run_demo(out=self.stdout.write, wait=wait)
        if missing:
            raise CommandError(f'no event of kind(s) {", ".join(sorted(missing))} appeared')
        self.stdout.write(self.style.SUCCESS('Every kind of event was recorded: see the Retry events page.'))

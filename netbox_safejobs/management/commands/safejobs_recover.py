"""``netbox safejobs_recover``: one recovery pass, for cron or by hand."""

from django.core.management.base import BaseCommand

from netbox_safejobs import webhooks
from netbox_safejobs.models import JobDispatch
from netbox_safejobs.recovery import run_pass


class Command(BaseCommand):
    help = (
        'Send again the pushes netbox-safejobs still owes RQ (Redis was down, the process died before pushing, '
        'Redis lost the task) and close jobs left running by a worker that died. Safe to run at any time and '
        'from several hosts: a task Redis already holds is not pushed again.'
    )

    def add_arguments(self, parser):
        parser.add_argument('--dry-run', action='store_true', help='Report what would be done; change nothing.')
        parser.add_argument('--resend-webhooks', action='store_true',
                            help="First send again every event rule's webhook that gave up (its receiver failed "
                                 'every attempt RQ_RETRY_MAX allows).')

    def handle(self, *args, dry_run=False, resend_webhooks=False, **options):
        if resend_webhooks:
            given_up = JobDispatch.objects.filter(job__isnull=True, gave_up__isnull=False)
            count = given_up.count() if dry_run else webhooks.resend(given_up)
            self.stdout.write(f'{"would send" if dry_run else "sent"} {count} given-up webhook(s) again')
        report = run_pass(dry_run=dry_run)
        verbosity = options.get('verbosity', 1)
        if verbosity >= 2:
            for job_uuid in report.pushed:
                self.stdout.write(f'{"would push" if dry_run else "pushed"} {job_uuid}')
            for job_uuid in report.stuck_errored:
                self.stdout.write(f'{"would mark errored" if dry_run else "marked errored"} {job_uuid}')
        self.stdout.write(report.summary())
        if report.errors:
            self.stderr.write('\n'.join(report.errors))
            raise SystemExit(1)

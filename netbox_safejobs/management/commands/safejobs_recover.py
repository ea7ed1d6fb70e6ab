"""``netbox safejobs_recover``: one recovery pass, for cron or by hand."""

from django.core.management.base import BaseCommand, CommandError

from netbox_safejobs import webhooks
from netbox_safejobs.liveness import observation_window
from netbox_safejobs.models import JobDispatch
from netbox_safejobs.recovery import run_pass


class Command(BaseCommand):
    help = (
        'Send again the pushes netbox-safejobs still owes RQ (Redis was down, the process died before pushing, '
        'Redis lost the task), close jobs left running by a worker that died, and merge periodic jobs that have more '
        'than one future run into one. With --adopt, first take over the jobs NetBox left waiting or running '
        'without the plugin, as a worker does when it starts. Safe to run at any time and from several hosts: a '
        'task Redis already holds is not pushed again.'
    )
    # Run from cron and after incidents: a system check failing elsewhere in NetBox must not stop the recovery, and
    # the checks import all of NetBox's URLs and views first (most of the command's time). The plugin's settings are
    # validated when it loads, as for every command.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument('--dry-run', action='store_true', help='Report what would be done; change nothing.')
        parser.add_argument('--resend-webhooks', action='store_true',
                            help="First send again every event rule's webhook that gave up (its receiver failed "
                                 'every attempt RQ_RETRY_MAX allows).')
        parser.add_argument('--observe', type=float, default=None, metavar='SECONDS',
                            help='Close a job whose worker stopped heartbeating only if it is still stale this many '
                                 'seconds later (default: two heartbeats, 2 x (heartbeat_interval + relay_interval)): '
                                 'after a database outage or failover every heartbeat looks stale until the live '
                                 'workers write theirs again. Waits only when there is such a job.')
        parser.add_argument('--adopt', action='store_true',
                            help='First adopt the jobs NetBox left waiting or running without the plugin (before it '
                                 'was installed, or by a process without it): cover, rebuild and send again, or close '
                                 'them, and list those that cannot be rebuilt. Workers do this when they start.')

    def handle(self, *args, dry_run=False, resend_webhooks=False, adopt=False, observe=None, **options):
        if observe is not None and observe < 0:
            raise CommandError(f'--observe is {observe:g}; it must be a number of seconds >= 0.')
        if resend_webhooks:
            given_up = JobDispatch.objects.filter(job__isnull=True, gave_up__isnull=False)
            count = given_up.count() if dry_run else webhooks.resend(given_up)
            self.stdout.write(f'{"would send" if dry_run else "sent"} {count} given-up webhook(s) again')
        report = run_pass(dry_run=dry_run, adopt=adopt,
                          observe=observation_window() if observe is None else observe)
        verbosity = options.get('verbosity', 1)
        if verbosity >= 2 and report.adoption is not None:
            self.write_adoption(report.adoption, dry_run)
        if verbosity >= 2:
            for kept, deleted in report.chains.merged:
                self.stdout.write(f'{"would keep" if dry_run else "kept"} {kept}, '
                                  f'{"would delete" if dry_run else "deleted"} {", ".join(map(str, deleted))}')
            for job_uuid in report.pushed:
                self.stdout.write(f'{"would push" if dry_run else "pushed"} {job_uuid}')
            for job_uuid in report.stuck_errored:
                self.stdout.write(f'{"would mark errored" if dry_run else "marked errored"} {job_uuid}')
        self.stdout.write(report.summary())
        if report.errors:
            self.stderr.write('\n'.join(report.errors))
            raise SystemExit(1)

    def write_adoption(self, report, dry_run):
        would = 'would ' if dry_run else ''
        for label, uuids in (('cover', report.covered), ('rebuild and send', report.rebuilt),
                             ('close', report.closed)):
            for job_uuid in uuids:
                self.stdout.write(f'{would}{label} {job_uuid}' if dry_run else f'adopted ({label}) {job_uuid}')
        for job_uuid, reason in report.listed:
            self.stdout.write(f'not adopted {job_uuid}: {reason}')
        for job_uuid in report.vouched:
            self.stdout.write(f'left alone {job_uuid}: running under a live RQ worker')

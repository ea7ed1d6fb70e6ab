"""
One recovery pass on demand: ``netbox safejobs_recover`` (by hand, from cron, or where no worker runs the plugin).

The same code as the loop every ``rqworker`` runs (``worker_loop.py``): the relay sends every owed push
(``relay.py``), jobs whose worker stopped heartbeating are closed (``liveness.py``), and periodic jobs with more than
one future run are merged into one (``chains.py``). With ``adopt``, first the jobs NetBox left waiting or running
without the plugin are adopted (``adoption.py``), as a guarded worker does when it starts. Safe at any time and from
any number of hosts at once: rows are taken with ``FOR UPDATE SKIP LOCKED`` and leases closed with ``DELETE ...
RETURNING``, so nothing is sent or closed twice. No system job runs it: a system job lives in Redis, which is what
fails.
"""

import logging
from dataclasses import dataclass, field

from django.db import router

from . import adoption, chains, liveness, relay

__all__ = (
    'RecoveryReport',
    'run_pass',
)

logger = logging.getLogger('netbox_safejobs.recovery')


@dataclass
class RecoveryReport:
    pushed: list = field(default_factory=list)
    reowed: int = 0
    rejected: list = field(default_factory=list)
    stuck_errored: list = field(default_factory=list)
    cleaned: int = 0
    errors: list = field(default_factory=list)
    redis_down: bool = False
    dry_run: bool = False
    # The ``adoption.AdoptionReport`` when the pass adopted, and the ``chains.ChainReport`` of the merge.
    adoption: object = None
    chains: object = None

    def summary(self):
        if self.dry_run:
            text = (f'would push {len(self.pushed)} owed job(s); would close {len(self.stuck_errored)} job(s) whose '
                    f'worker stopped heartbeating')
        else:
            text = (f'pushed {len(self.pushed)} owed job(s), {self.reowed} owed again after Redis lost its data, '
                    f'{len(self.rejected)} stored push(es) rejected; closed {len(self.stuck_errored)} job(s) whose '
                    f'worker stopped heartbeating; removed {self.cleaned} finished dispatch row(s)')
        if self.adoption is not None:
            text += '; ' + self.adoption.summary()
        if self.chains is not None and (self.chains.merged or self.dry_run):
            text += '; ' + self.chains.summary()
        if self.redis_down:
            text += '; Redis does not answer: owed pushes stay owed'
        if self.errors:
            text += f'; {len(self.errors)} error(s): ' + '; '.join(self.errors[:5])
        return text


def run_pass(dry_run=False, stuck=True, adopt=False, observe=0.0):
    """
    One pass: (with ``adopt``, adoption), the merge of chains, the relay, then liveness (``observe``: seconds a stale
    lease must stay stale before it is closed, ``liveness.close_stale``). Returns a ``RecoveryReport``; never raises
    for an outage (it is reported).
    """
    from core.models import Job

    from .settings import get_settings

    using = router.db_for_write(Job)
    report = RecoveryReport(dry_run=dry_run)
    if adopt:
        # First, so that what it rebuilds is sent by this pass's relay and the merge keeps a run that runs.
        report.adoption = adoption.adopt(using, dry_run=dry_run,
                                         close_running=stuck and get_settings().stuck_job_detection)
        report.errors += report.adoption.errors
    report.chains = chains.merge(using, dry_run=dry_run)
    report.errors += report.chains.errors
    sent = relay.send_owed(using=using, dry_run=dry_run, sweep=True)
    report.pushed, report.reowed, report.rejected = sent.pushed, sent.reowed, sent.rejected
    report.cleaned, report.redis_down = sent.cleaned, sent.redis_down
    report.errors += sent.errors
    if stuck and get_settings().stuck_job_detection:
        closed = liveness.close_stale(using=using, dry_run=dry_run, observe=observe)
        report.stuck_errored = closed.closed
        report.errors += closed.errors
    level = logging.WARNING if (report.pushed or report.stuck_errored or report.errors or report.chains.merged
                                or (report.adoption is not None and report.adoption.adopted)) else logging.INFO
    logger.log(level, 'recovery pass: %s', report.summary())
    return report

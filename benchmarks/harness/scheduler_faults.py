"""
RQ's scheduler lost: the worker that runs it killed while jobs are scheduled a few seconds ahead (found by the fault
explorer, ``scripts/dev bench explore``).
"""

import time
from datetime import timedelta

from .core import WorkerPool, scenario
from .support import collect, read_runs, wait_until_settled

__all__ = (
    'scenario_scheduler_killed',
)

# How long the scenario waits for the scheduled jobs after their time: RQ's own recovery (another worker taking the
# dead scheduler's lock over in its maintenance tasks) comes only after 10 minutes.
PATIENCE = 90


@scenario
def scenario_scheduler_killed(ctx, mode, opts, runs_file):
    """
    The worker running RQ's scheduler SIGKILLed with it (the OOM killer, a host lost) while ``--fault-jobs`` jobs are
    scheduled 5 s ahead; a second worker runs on. RQ's lock outlives the dead scheduler by 61 s, and the live worker
    tries to take it over only in its maintenance tasks, every 10 minutes. Measured: seconds from the jobs' time to the
    last one's start, within ``PATIENCE`` seconds.
    """
    from django.utils import timezone

    from benchmarks.runners import HarnessJob

    first = WorkerPool(ctx, mode, runs_file, count=1)
    first.wait_ready()
    time.sleep(1)  # its scheduler holds the lock of every queue
    second = WorkerPool(ctx, mode, runs_file, count=1)
    after = None
    try:
        second.wait_ready()
        due = timezone.now() + timedelta(seconds=5)
        committed = [HarnessJob.enqueue(schedule_at=due).job_id for _ in range(opts.fault_jobs)]
        first.kill()
        if wait_until_settled(committed, timeout=PATIENCE, idle=PATIENCE, pool=second):
            _, starts = read_runs(runs_file)
            after = round(max(starts[u] for u in committed) - due.timestamp(), 2)
    finally:
        second.stop()
    return collect(committed, [], runs_file, extra={'all_ran_s_after_due': after, 'patience_s': PATIENCE})

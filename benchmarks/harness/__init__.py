"""
Race and fault harness: what stock NetBox loses and what netbox-safejobs keeps, on real PostgreSQL, a real Redis
server and real ``netbox rqworker`` processes, both measured in the same invocation.

    scripts/dev bench harness                     # the full run (10,000-job race, every fault, cost, chart)
    scripts/dev bench harness --short             # a few hundred jobs, each fault once
    scripts/dev bench harness --scenarios race,duplicate_push --jobs 2000 --workers 2

*Stock* is NetBox with the plugin installed and every switch off (``dispatch_on_commit``, ``worker_guard``,
``worker_loop``, ``stuck_job_detection``): NetBox's own code paths, in the harness and in its workers.
No scenario runs a recovery pass by hand or moves a clock: delivery and liveness are what the plugin's workers do on
their own, with the default settings.
*Plugin* is the plugin with its defaults, except where a scenario says otherwise (printed with the results).

The harness uses the development database and a private Redis server it starts on a free port (and stops and
restarts in the outage scenario); it removes its jobs afterwards. In the lost_claim_reply scenario the workers reach
PostgreSQL through a TCP proxy of the harness that drops one reply per job (``ReplyCutter``); in pg_blip and
pg_outage through one that cuts every connection for a while (``DatabaseGate``).
It exits with status 1 when a plugin guarantee is broken: a job lost, a ghost row, a resurrected row, a duplicate
run or an exception in a caller.
"""

# One module per family of faults; a new fault is one function in the module of its family, decorated with @scenario:
# it runs for both modes, --scenarios accepts its name, and a full run includes it (after those of RUN_ORDER).
#
#   core.py             the modes, the guarantees, Context, WorkerPool and the @scenario registry
#   proxies.py          the TCP proxies in front of PostgreSQL (ReplyCutter, DatabaseGate)
#   support.py          what scenarios share: the runs file, waits, enqueue_many, collect, cleanup
#   callers.py          callers: race, crash_after_commit, deleted_rows, duplicate_push, concurrent_relays, ...
#   redis_faults.py     Redis outages, flushes, an older snapshot, key rotation
#   workers.py          workers and work horses killed, stopped, upgraded, adopted, restarted
#   postgres_faults.py  PostgreSQL connections terminated, a lost reply, horses' sessions, the database unreachable
#   doors.py            webhooks and script runs
#   scheduler_faults.py RQ's scheduler killed with its worker
#   throughput.py       cost, throughput, the statement profile, recovery at scale
#   report.py           Markdown tables, the chart, the broken guarantees
#   cli.py              the options, the run, main() (``python -m benchmarks.harness``)
#
# The fault explorer (``scripts/dev bench explore``): random schedules instead of named scenarios.
#
#   schedules.py        a seed -> a schedule of work, operator actions and overlapping faults
#   explorer_work.py    the users and the operator (Workload), and the History they leave
#   explorer_faults.py  one method per fault, each healed after its seconds
#   explorer_checks.py  the invariants, checked on the whole history; the wait until things settle
#   explorer.py         the run of one schedule, the shrink, the options, main() (``python -m benchmarks.explore``)

# Imported for their @scenario functions.
from . import callers, doors, postgres_faults, redis_faults, scheduler_faults, throughput, workers  # noqa: F401
from .cli import main, parse_args, run, run_pairs
from .core import GUARANTEES, MODES, SCENARIOS, Context, WorkerPool, run_in_order, scenario
from .report import broken_guarantees, chart, markdown
from .support import percentile

__all__ = (
    'GUARANTEES',
    'MODES',
    'RUN_ORDER',
    'SCENARIOS',
    'Context',
    'WorkerPool',
    'broken_guarantees',
    'chart',
    'main',
    'markdown',
    'parse_args',
    'percentile',
    'run',
    'run_pairs',
    'scenario',
)

# The order of a full run, across the families: the harness's order when it was one file (each fault added after the
# last), that of the full tables in docs/results.md, so that full runs before and after compare line by line.
RUN_ORDER = (
    'race', 'redis_outage', 'redis_outages', 'redis_flushed', 'crash_after_commit', 'deleted_rows', 'deleted_mid_run',
    'worker_killed', 'stop', 'worker_sigkill', 'db_terminated', 'duplicate_push', 'concurrent_relays',
    'lost_claim_reply', 'horse_sessions', 'pg_blip', 'pg_outage', 'key_rotation', 'upgrade_from_0_1',
    'snapshot_restore', 'adoption', 'chains', 'caller_catches', 'webhooks_outage', 'webhooks_flushed',
    'webhooks_rolled_back', 'script_outage', 'silent_redis', 'scheduler_killed', 'cost', 'throughput',
)
run_in_order(RUN_ORDER)

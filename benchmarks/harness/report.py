"""The results as Markdown tables and a chart, and the plugin guarantees a run broke (the exit status)."""

import statistics

from .core import GUARANTEES
from .throughput import PROFILE_ROLES

__all__ = (
    'COST_ROWS',
    'PAIRED',
    'ROWS',
    'THROUGHPUT_ROWS',
    'broken_guarantees',
    'chart',
    'markdown',
    'order_balanced',
    'statement_table',
)


ROWS = (
    ('jobs', 'jobs'), ('committed', 'committed'), ('completed', 'completed'), ('errored', 'errored/failed'),
    ('lost', 'lost (left pending/running)'), ('left_running', 'of which left running'),
    ('ghost_rows', 'ghost rows'), ('resurrected', 'resurrected rows'),
    ('runs', 'run() calls'), ('duplicate_runs', 'jobs run twice'), ('caller_exceptions', 'caller exceptions'),
    ('rq_failed', 'RQ failed registry'), ('all_ran_s_after_redis_back', 'all ran, s after Redis back'),
    ('caller_held_s', 'caller held, s (one transaction)'),
    ('outage_s', 'Redis down, s'), ('outages', 'Redis outages, s each'),
    ('ran_s_after_redis_back_p50', 'ran, s after Redis back: p50'),
    ('ran_s_after_redis_back_max', 'ran, s after Redis back: max'),
    ('all_ran_s_after_flush', 'all ran, s after the flush'), ('deleted', 'rows deleted'),
    ('next_runs_of_deleted', 'next runs of deleted periodic jobs'), ('killed', 'work horses killed'),
    ('closed_s_after_kill', 'closed, s after the kill'), ('owed_pushes', 'owed pushes'),
    ('stopped', 'running jobs stopped (stock: deleted)'), ('horse_ended_s_p50', 'work horse ended, s after: p50'),
    ('horse_ended_s_max', 'work horse ended, s after: max'), ('horses_ran_on', 'work horses running on past 2 s'),
    ('relays', 'concurrent relays'),
    ('pushed', 'pushes reaching Redis'), ('double_sends', 'sent twice'), ('not_sent', 'not sent'),
    ('duplicate_skipped', 'duplicate skipped events'),
    ('connections_terminated', 'connections terminated'),
    ('replies_cut', 'replies lost after the commit'), ('cut_statements', 'statements whose reply was lost'),
    ('callers', 'callers'), ('enqueue_errors_caught', 'enqueue errors caught'),
    ('callers_broken', 'callers whose transaction broke'), ('saved_kept', 'saved objects kept'),
    ('events', 'plugin events'), ('dispatch_rows_left', 'leases/pushes left in the outbox'),
    ('shared_sessions', 'work horses sharing a session (of 4)'), ('tls_sessions', 'TLS sessions'),
    ('killed_transactions_committed', 'killed transactions committed'),
    ('db_down_s', 'PostgreSQL unreachable, s'),
    ('first_ran_s_after_db_back', 'first ran, s after PostgreSQL back'),
    ('all_ran_s_after_db_back', 'all ran, s after PostgreSQL back'),
    ('live_jobs_closed', 'live job closed'), ('next_runs', 'next runs scheduled'),
    ('extra_next_runs', 'next runs too many'),
    ('pushes_rejected', 'stored pushes rejected'),
    ('first_release', 'first release'), ('pushed_by_0_1', 'pushed by 0.1.0'), ('owed_by_0_1', 'owed by 0.1.0'),
    ('unsigned_by_0_1', 'pushes 0.1.0 stored unsigned'),
    ('note', 'note'),
    ('webhooks', 'webhooks (one per tag created)'), ('requests_failed', 'requests failed (HTTP 5xx)'),
    ('webhooks_delivered', 'webhooks delivered'), ('webhooks_lost', 'webhooks never delivered'),
    ('webhooks_twice', 'webhooks delivered twice'),
    ('first_delivered_s_after_redis_back', 'first delivered, s after Redis back'),
    ('delivered_s_after_redis_back', 'all delivered, s after Redis back'),
    ('commit_mode', "django-rq's COMMIT_MODE in the enqueuing process"),
    ('webhooks_rolled_back_sent', 'webhooks sent for rolled-back changes'),
    ('script_runs', 'script runs requested (REST API + UI)'), ('runs_accepted_api', 'accepted by the REST API'),
    ('runs_accepted_ui', 'accepted by the UI'), ('runs_lost', 'script runs left pending'),
    ('all_ran_s_after_worker_start', 'all ran, s after the worker process started'),
    ('all_ran_s_after_first_heartbeat', 'all ran, s after its first heartbeat'),
    ('left_by_stock', 'left by stock NetBox before the start-up'),
    ('stuck_running', 'left running, no worker running them'),
    ('queued_completed', 'waiting with a task: completed'), ('lost_listed', 'task lost: listed for the operator'),
    ('lost_unlisted', 'task lost: left waiting, unlisted'),
    ('system_runs_without_task', 'system job runs left without a task'), ('adopted_events', '"adopted" events'),
    ('unwatched', 'jobs nothing watches'), ('cycles', 'restarts (one per simulated hour)'),
    ('system_jobs', 'system jobs'), ('system_job_runs', 'system job runs (each due once)'),
    ('system_job_future_runs', 'future runs per system job, after'), ('chains', 'hourly jobs'),
    ('chain_runs', 'hourly job runs'), ('chains_broken', 'hourly jobs without a future run, after'),
    ('chains_doubled', 'hourly jobs with two or more future runs, after'),
    ('chain_rows_left_running', 'hourly job rows left running'), ('extra_future_runs', 'future runs too many'),
    ('merge_events', '"chain merged" events'),
    ('worker_restarts', 'workers restarted'),
    ('seconds', 'scenario time, s'),
)


COST_ROWS = (
    ('enqueue_commit_ms_p50', 'enqueue+commit p50, ms'), ('enqueue_commit_ms_p99', 'enqueue+commit p99, ms'),
    ('commit_to_start_ms_p50', 'commit→start p50, ms'), ('commit_to_start_ms_p99', 'commit→start p99, ms'),
    ('throughput_jobs_per_s', 'throughput, jobs/s'),
)


THROUGHPUT_ROWS = (
    ('throughput_jobs_per_s', 'throughput, jobs/s'),
    ('worker_cpu_ms_per_job', 'CPU of the workers (main thread, loop), ms/job'),
    ('horse_cpu_ms_per_job', 'CPU of the work horses, ms/job'),
    ('horse_kernel_ms_per_job', 'of which in the kernel (fork, page faults, exit), ms/job'),
    ('horse_page_faults_per_job', 'page faults of the work horses, per job'),
    ('postgres_cpu_ms_per_job', 'CPU of PostgreSQL, ms/job'),
    ('enqueue_cpu_ms_per_job', 'CPU of the enqueuing process, ms/job'),
    ('commits_per_job', 'commits per job'),
    ('statements_per_job', 'statements per job'),
)


# The scenarios run in interleaved pairs with --pairs, and the figures their pairs compare.
PAIRED = {'cost': COST_ROWS, 'throughput': THROUGHPUT_ROWS}


def broken_guarantees(results):
    broken = []
    for scenario, modes in results.items():
        plugin = modes.get('plugin') or {}
        for key in GUARANTEES:
            if plugin.get(key):
                broken.append(f'{scenario}: {key} = {plugin[key]}')
    return broken


def order_balanced(ratios):
    """
    The plugin/stock ratio with the order within a pair cancelled out: the geometric mean of the mean log-ratio of
    the pairs that ran stock first (even-numbered, from 0) and that of the pairs that ran the plugin first. On a
    small machine the second run of a pair can be faster whatever its mode; with an odd number of pairs, the plain
    median then leans towards the order that ran more often. ``None`` with fewer than two pairs.
    """
    import math

    first = [math.log(r) for r in ratios[0::2] if r]
    second = [math.log(r) for r in ratios[1::2] if r]
    if not first or not second:
        return None
    return math.exp((statistics.fmean(first) + statistics.fmean(second)) / 2)


def statement_table(modes):
    """The per-job profile of a ``--profile`` run: statements and their time to reply, by role, verb and table."""
    stock, plugin = modes.get('stock', {}).get('statements', {}), modes.get('plugin', {}).get('statements', {})
    lines = ['| process | statement | stock: per job | stock: ms/job | plugin: per job | plugin: ms/job |',
             '|---|---|---|---|---|---|']
    role_order = {role: n for n, role in enumerate(PROFILE_ROLES)}
    keys = sorted(set(stock) | set(plugin), key=lambda k: (role_order.get(k.split(' | ')[0], 9), k))
    totals = {}
    for key in keys:
        role, statement = key.split(' | ', 1)
        s, p = stock.get(key, {}), plugin.get(key, {})
        for mode, entry in (('stock', s), ('plugin', p)):
            total = totals.setdefault((role, mode), [0.0, 0.0])
            total[0] += entry.get('statements', 0)
            total[1] += entry.get('ms', 0)
        lines.append(f"| {role} | `{statement}` | {s.get('statements', 0):g} | {s.get('ms', 0):g} | "
                     f"{p.get('statements', 0):g} | {p.get('ms', 0):g} |")
    for role in PROFILE_ROLES:
        s, p = totals.get((role, 'stock'), [0, 0]), totals.get((role, 'plugin'), [0, 0])
        lines.append(f'| **{role}** | all | {s[0]:.2f} | {s[1]:.2f} | {p[0]:.2f} | {p[1]:.2f} |')
    return '\n'.join(lines) + '\n'


def _fmt(value):
    if value is None:
        return '–'
    if isinstance(value, dict):
        return ', '.join(f'{k} {v}' for k, v in sorted(value.items())) or '0'
    return str(value)


def markdown(results):
    lines = []
    for scenario, modes in results.items():
        lines.append(f'### {scenario}\n')
        if scenario == 'recovery_at_scale':
            r = modes['plugin']
            lines.append('| core_job rows | owed pushes | pushed | pass time, s |\n|---|---|---|---|')
            lines.append(f'| {r["core_job_rows"]:,} | {r["owed_pushes"]:,} | {r["pushed"]:,} | {r["pass_seconds"]} |\n')
            continue
        paired = scenario in PAIRED
        rows = PAIRED.get(scenario, ROWS)
        lines.append('| | stock | plugin |' + (' plugin/stock |' if paired else ''))
        lines.append('|---|---|---|' + ('---|' if paired else ''))
        for key, label in rows:
            stock, plugin = modes.get('stock', {}).get(key), modes.get('plugin', {}).get(key)
            if stock is None and plugin is None:
                continue
            row = f'| {label} | {_fmt(stock)} | {_fmt(plugin)} |'
            if paired:
                row += f' {plugin / stock:.3f} |' if stock and plugin else ' – |'
            lines.append(row)
        if modes.get('stock', {}).get('statements') or modes.get('plugin', {}).get('statements'):
            lines.append('\n' + statement_table(modes))
        if modes.get('pairs'):
            count = len(modes['pairs'])
            lines.append(f'\nMedians of {count} interleaved pairs. Plugin/stock ratio per pair:\n')
            lines.append('| | ' + ' | '.join(str(n + 1) for n in range(count))
                         + ' | median | min – max | order-balanced |')
            lines.append('|---|' + '---|' * (count + 3))
            for key, label in rows:
                ratios = [pair[key] for pair in modes['pairs'] if key in pair]
                if ratios:
                    balanced = order_balanced(ratios)
                    lines.append(f'| {label} | ' + ' | '.join(f'{r:.3f}' for r in ratios)
                                 + f' | {statistics.median(ratios):.3f} | {min(ratios):.3f} – {max(ratios):.3f} | '
                                 + (f'{balanced:.3f} |' if balanced else '– |'))
            lines.append('\nPairs 1, 3, 5, … ran stock first, 2, 4, … the plugin first; order-balanced: the geometric '
                         "mean of the two orders' mean ratios (`order_balanced()`).")
        lines.append('')
    return '\n'.join(lines)


def chart(results, path):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cost = results.get('cost')
    if not cost:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    panels = (
        ('throughput_jobs_per_s', 'throughput (jobs/s)'),
        ('enqueue_commit_ms_p50', 'enqueue + commit p50 (ms)'),
        ('commit_to_start_ms_p50', 'commit → start p50 (ms)'),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [cost['stock'][key], cost['plugin'][key]]
        bars = ax.bar(['stock NetBox', 'with netbox-safejobs'], values, color=['#9e9e9e', '#2e7d32'])
        ax.bar_label(bars, fmt='%.2f')
        ax.set_title(title)
    fig.suptitle('netbox-safejobs vs stock NetBox (same run)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path

"""
Retention of retry events: ``purge_events()`` deletes the events older than ``event_retention_days`` (0 keeps them
forever). Called by the housekeeping system job (``jobs.EventRetentionJob``).
"""

import logging
from datetime import timedelta

from django.db import connections, router, transaction
from django.utils import timezone

from .models import RetryEvent
from .settings import get_settings

__all__ = (
    'BATCH_SIZE',
    'purge_events',
)

logger = logging.getLogger('netbox_safejobs.retention')

# Rows deleted per statement and transaction: short locks and bounded WAL bursts even with millions of old events.
BATCH_SIZE = 10000


def purge_events(days=None, now=None, batch_size=BATCH_SIZE):
    """
    Delete the retry events older than ``days`` (default: the ``event_retention_days`` setting; 0 keeps every
    event) and return how many were deleted. The count is logged.

    Events are plain rows (no change logging, nothing refers to them), so they are deleted with plain ``DELETE``
    statements in batches, oldest first, each batch its own transaction, using the ``time`` index.
    """
    if days is None:
        days = get_settings().event_retention_days
    if not days:
        logger.info('Retry event retention is off (event_retention_days = 0): nothing deleted')
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    using = router.db_for_write(RetryEvent)
    table = connections[using].ops.quote_name(RetryEvent._meta.db_table)
    sql = (
        f'DELETE FROM {table} WHERE id IN ('
        f'SELECT id FROM {table} WHERE "time" < %s ORDER BY "time" LIMIT %s)'
    )
    deleted = 0
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(sql, [cutoff, batch_size])
            count = cursor.rowcount
        deleted += count
        if count < batch_size:
            break
    logger.info('Deleted %d retry event(s) older than %d day(s) (before %s)', deleted, days, cutoff.isoformat())
    return deleted

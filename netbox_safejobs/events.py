"""
``record()``: the one place where something that happened to a job becomes visible.

Every side effect of an event happens here and nowhere else: the ``RetryEvent`` row, the log line, the Prometheus
counter (``metrics``) and, for "gave up" and "dispatch failed", NetBox's event rules (``event_types``). Callers
describe what happened; they never write rows or log lines themselves, so the row and the log can never disagree.
"""

import functools
import logging
import os
import re
import uuid

from django.db import DatabaseError, IntegrityError, transaction

from . import compat, event_types, metrics, workers
from .choices import RetryEventKindChoices
from .payload import runner_path

__all__ = (
    'describe',
    'link_to_job',
    'record',
    'record_many',
    'redact',
)

logger = logging.getLogger('netbox_safejobs.events')


# Credentials that can end up in an error text: a password in a URL (redis://:secret@host, postgres://u:p@h), and
# password=... / PASSWORD: ... pairs as printed by libpq and redis-py.
_URL_PASSWORD = re.compile(r'(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@', re.I)
_KEY_PASSWORD = re.compile(r'(?P<key>\b(?:password|passwd|pwd|secret|token)\b\s*[=:]\s*)(?P<q>[\'"]?)[^\s\'",}]+',
                           re.I)

_LEVELS = {
    RetryEventKindChoices.KIND_RETRY: logging.WARNING,
    RetryEventKindChoices.KIND_FOUND_AFTER_RETRY: logging.INFO,
    RetryEventKindChoices.KIND_GAVE_UP: logging.ERROR,
    RetryEventKindChoices.KIND_DATABASE_ERROR: logging.ERROR,
    RetryEventKindChoices.KIND_DUPLICATE_SKIPPED: logging.WARNING,
    RetryEventKindChoices.KIND_DISPATCH_FAILED: logging.ERROR,
    RetryEventKindChoices.KIND_RECOVERED: logging.WARNING,
    RetryEventKindChoices.KIND_STUCK_ERRORED: logging.ERROR,
    RetryEventKindChoices.KIND_ROW_DELETED: logging.WARNING,
    RetryEventKindChoices.KIND_PAYLOAD_REJECTED: logging.ERROR,
    RetryEventKindChoices.KIND_OPERATOR_STOPPED: logging.WARNING,
    RetryEventKindChoices.KIND_WEBHOOK_FAILED: logging.WARNING,
    RetryEventKindChoices.KIND_ADOPTED: logging.WARNING,
    RetryEventKindChoices.KIND_NOT_ADOPTED: logging.ERROR,
    RetryEventKindChoices.KIND_CHAIN_MERGED: logging.WARNING,
}


_LABELS = {choice[0]: str(choice[1]) for choice in RetryEventKindChoices.CHOICES}


def redact(text):
    """Remove passwords from an error text before it is stored or logged."""
    if not text:
        return ''
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _KEY_PASSWORD.sub(lambda m: f"{m['key']}{m['q']}***", text)


def describe(exc):
    """An exception as one line of text for an event: type and message, without a trailing full stop."""
    text = ' '.join(str(exc).split()).rstrip('.')
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _build(kind, job, job_uuid, job_name, runner, queue, attempt, delay, detail):
    """The unsaved ``RetryEvent``, its log message and the log record's extra fields."""
    from .models import RetryEvent

    if job is not None:
        job_uuid = job_uuid or job.job_id
        job_name = job_name or job.name
        queue = queue or compat.known_rq_queue_name(job)
    job_uuid = uuid.UUID(str(job_uuid))
    detail = redact(detail)
    runner = runner_path(runner)

    parts = [f'job {job_uuid}']
    if job_name:
        parts.append(f'({job_name})')
    if attempt is not None:
        parts.append(f'attempt {attempt}')
    if delay is not None:
        parts.append(f'delay {delay:.3f}s')
    message = f'{_LABELS.get(kind, kind)}: ' + ' '.join(parts)
    if detail:
        message += f': {detail}'
    extra = {'safejobs_kind': kind, 'job_uuid': str(job_uuid), 'attempt': attempt, 'delay': delay}
    event = RetryEvent(
        job_uuid=job_uuid, job_name=(job_name or '')[:200], runner=runner[:255], queue=(queue or '')[:100],
        kind=kind, attempt=attempt, delay=delay, detail=detail, worker_host=workers.HOST, worker_pid=os.getpid(),
    )
    return event, message, extra


def _emit(event, message, extra, using):
    """The side effects of a stored event: the log line, the counter, the event rules."""
    kind = event.kind
    logger.log(_LEVELS.get(kind, logging.WARNING), message, extra=extra)
    metrics.count_event(kind)
    if kind in event_types.EVENT_TYPES:
        # NetBox event rules see the event once its row is committed (at once outside a transaction).
        try:
            transaction.on_commit(functools.partial(event_types.trigger, event, using), using=using, robust=True)
        except Exception:
            logger.exception('Event rules for retry event %s not scheduled', event.pk)


def _not_stored(kind, message, extra, error):
    logger.log(_LEVELS.get(kind, logging.WARNING), '%s (event not stored: %s)', message, redact(error), extra=extra)
    metrics.count_event(kind)


def record(kind, *, job=None, job_uuid=None, job_name='', runner=None, queue='', attempt=None, delay=None,
           detail='', using='default'):
    """
    Record one event: write the ``RetryEvent`` row and the log line, count it, and (for the kinds with a NetBox
    event type) run the event rules once the row is committed.

    ``job`` is a Job instance when one is at hand (its row may or may not exist); ``job_uuid`` alone is enough.
    The row links to the Job only when the Job row exists. Recording never raises: an event that cannot be
    written (the database is down: that may be the event) is still logged, with the reason it was not stored.
    Returns the saved ``RetryEvent`` or ``None``.
    """
    event, message, extra = _build(kind, job, job_uuid, job_name, runner, queue, attempt, delay, detail)
    try:
        # A savepoint when called inside a transaction, so a failed insert cannot poison the caller's transaction.
        with transaction.atomic(using=using):
            job_pk = None
            if job is not None and job.pk is not None:
                # Link only to a row that is really there: the link is for convenience, the UUID is the identity.
                from core.models import Job

                job_pk = Job.objects.using(using).filter(pk=job.pk).values_list('pk', flat=True).first()
            event.job_id = job_pk
            event.save(using=using)
    except DatabaseError as e:
        _not_stored(kind, message, extra, e)
        return None
    _emit(event, message, extra, using)
    return event


def record_many(kind, entries, using='default'):
    """
    Record many events of one kind with one INSERT (the recovery pass after an outage: a thousand at once), with
    the same log line, counter and event rules per event as ``record()``. ``entries`` are dicts of ``record()``'s
    keyword arguments plus ``job_pk``, the primary key of a Job row the caller has just read (``None`` for none).
    Returns the stored events (none when they could not be stored; every one is logged either way).
    """
    from .models import RetryEvent

    built = []
    for entry in entries:
        entry = dict(entry)
        job_pk = entry.pop('job_pk', None)
        event, message, extra = _build(kind, entry.pop('job', None), entry.pop('job_uuid', None),
                                       entry.pop('job_name', ''), entry.pop('runner', None), entry.pop('queue', ''),
                                       entry.pop('attempt', None), entry.pop('delay', None), entry.pop('detail', ''))
        event.job_id = job_pk
        built.append((event, message, extra))
    if not built:
        return []
    events = [event for event, _, _ in built]
    try:
        try:
            with transaction.atomic(using=using):
                RetryEvent.objects.using(using).bulk_create(events)
        except IntegrityError:
            # A Job deleted since the caller read it: keep the UUIDs, drop the links.
            for event in events:
                event.job_id = None
                event.pk = None
            with transaction.atomic(using=using):
                RetryEvent.objects.using(using).bulk_create(events)
    except DatabaseError as e:
        for _event, message, extra in built:
            _not_stored(kind, message, extra, e)
        return []
    for event, message, extra in built:
        _emit(event, message, extra, using)
    return events


def link_to_job(job, using='default'):
    """
    Link the earlier events of ``job``'s UUID that were written while its row was not visible yet (``retry`` before
    ``found after retry``) to the row, now that it is there: "(no job row)" must mean the row is really gone.
    Never raises; one UPDATE, off the happy path.
    """
    from .models import RetryEvent

    try:
        with transaction.atomic(using=using):
            RetryEvent.objects.using(using).filter(job_uuid=job.job_id, job__isnull=True).update(job_id=job.pk)
    except DatabaseError as e:
        logger.warning('job %s: earlier events not linked to its row (%s)', job.job_id, redact(describe(e)))

"""
The quick search of the retry events by words: the words of a search as PostgreSQL's parser splits them, matched
against each event's stored words (job name, runner, worker host, detail) from the newest events or from the
full-text index, whichever the search's frequency makes cheaper (docs/performance.md has the figures).
"""

import re

from django.contrib.postgres.search import SearchQuery
from django.db import connection, transaction
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL

from .bounded_count import COUNT_STEP
from .models import RetryEvent

__all__ = (
    'SEARCH_WORDS',
    'read_newest_first',
    'search_terms',
    'word_matches',
)

# The most words of a quick search looked up, and the shortest start of a word looked up as one.
SEARCH_WORDS = 8
SEARCH_PREFIX_LENGTH = 3
NUMBER = re.compile(r'[-+]?[\d.]+')
# How a quick search is read (``word_matches``): how many of the newest events are checked first, how many of them
# must match for the search to be read newest first (enough that the first pages need not count them), and the most
# matches kept as a list of IDs.
RECENT_EVENTS = 10_000
RECENT_MATCHES = COUNT_STEP + 1
SEARCH_IDS = 2000


class _Rollback(Exception):
    pass


def word_matches(queryset, terms):
    """
    The condition "the stored words of the event match ``terms``" for ``queryset``, and how many events are known to
    match it (0 when that is not known, or when they are few enough to count).

    How to read a search depends on how many events it matches, which PostgreSQL can only guess for a word it has
    no statistics of, and it guesses few: left to itself, it would look for a rare word by reading every event newest
    first. So, in at most two cheap statements (docs/performance.md, *The quick search*, has the figures):

    1. the newest ``RECENT_EVENTS`` events are checked, from the time index and their stored words. When
       ``RECENT_MATCHES`` of them match, the search is frequent among the events an operator pages through: the
       condition is the search itself, read newest first, and the matches found are known (more than the first
       page's count would count). The full-text index is not read: for words in a large share of the events, it
       would read every one of their entries;
    2. otherwise the matches are read from the full-text index alone (a bitmap scan, forced for that one statement;
       fast for rarer words), up to ``SEARCH_IDS``: when that is all of them, the condition is those IDs (the
       primary key answers the page and its count). More matches are read as the search itself, and are known.
    """
    query = SearchQuery(terms, search_type='raw', config='simple')
    newest = queryset.order_by('-time', '-pk').values('search_words')[:RECENT_EVENTS]
    sql, params = newest.query.sql_with_params()
    with connection.cursor() as cursor:
        # The filter outside the LIMIT: the newest events first, whatever PostgreSQL guesses of the words.
        cursor.execute(
            f"SELECT count(*) FROM ({sql}) newest WHERE newest.search_words @@ to_tsquery('simple'::regconfig, %s)",
            [*params, terms],
        )
        recent = cursor.fetchone()[0]
    if recent >= RECENT_MATCHES:
        return read_newest_first(terms), recent
    ids = None
    matches = queryset.filter(search_words=query).order_by()
    try:
        with transaction.atomic(using=matches.db), connection.cursor() as cursor:
            # Only for this statement: the savepoint (or transaction) is rolled back, which undoes SET LOCAL.
            cursor.execute('SET LOCAL enable_seqscan = off')
            cursor.execute('SET LOCAL enable_indexscan = off')
            ids = list(matches.values_list('pk', flat=True)[:SEARCH_IDS + 1])
            raise _Rollback
    except _Rollback:
        pass
    if len(ids) <= SEARCH_IDS:
        return Q(pk__in=ids), 0
    return read_newest_first(terms), SEARCH_IDS + 1


def read_newest_first(terms):
    """
    The condition "the stored words match ``terms``" for a search known to match many events, written so that
    PostgreSQL reads events by the order or the other filters asked for and checks their words, rather than reading
    every match from the full-text index and sorting them. As a plain ``@@`` it estimates the share of events matching
    several words as the product of their shares, and words that come together (``timeout expired``) look rare to
    it: the first page then sorted every match, or read the whole table without the index. Inside a ``CASE`` the
    condition has no estimate and is taken to match half of the events, nearer the truth for such a search: the
    first page reads events newest first, and a rare kind's index is still used (figures: docs/performance.md).
    """
    table = RetryEvent._meta.db_table
    return Q(RawSQL(
        f'CASE WHEN "{table}"."search_words" @@ to_tsquery(\'simple\'::regconfig, %s) THEN true ELSE false END',
        [terms], output_field=BooleanField(),
    ))


def search_terms(value):
    """
    The quick search's text as a raw ``tsquery``: its words as PostgreSQL's parser splits them (the same parser as
    the index's, so that ``worker-2`` is ``worker`` and ``-2`` in both), all required, at most ``SEARCH_WORDS``. The
    last one may be the start of a word (as typed so far: ``SyncDataSource`` finds ``SyncDataSourceJob``) when it
    has ``SEARCH_PREFIX_LENGTH`` characters or more and is not a number: a shorter prefix would expand to most
    entries of the index, and PostgreSQL cannot estimate how many rows a numeric prefix (a job number, a PID)
    matches. Empty when the text has no words.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT lexeme FROM unnest(to_tsvector('simple', %s)) ORDER BY positions[array_length(positions, 1)]",
            [value],
        )
        words = [row[0] for row in cursor.fetchall()][-SEARCH_WORDS:]
    if not words:
        return ''
    terms = ["'{}'".format(word.replace('\\', '\\\\').replace("'", "''")) for word in words]
    last = words[-1]
    if len(last) >= SEARCH_PREFIX_LENGTH and not NUMBER.fullmatch(last):
        terms[-1] += ':*'
    return ' & '.join(terms)

"""
Delay schedules for the worker guard's look-ups, as small pure functions.

The seed report of NetBox #18880 suggests Fibonacci waits: they start short (a row committed a few milliseconds
late is found at the second look) and grow gently, so a transaction held open for seconds is still waited out
within a handful of tries.
"""

from itertools import islice

__all__ = (
    'SCHEDULES',
    'delays',
    'exponential',
    'fibonacci',
)


def fibonacci(base):
    """base × 1, 1, 2, 3, 5, 8, … (0.5 → 0.5, 0.5, 1, 1.5, 2.5, …)."""
    a, b = 1, 1
    while True:
        yield base * a
        a, b = b, a + b


def exponential(base):
    """base × 1, 2, 4, 8, … (0.5 → 0.5, 1, 2, 4, …)."""
    factor = 1
    while True:
        yield base * factor
        factor *= 2


SCHEDULES = {
    'fibonacci': fibonacci,
    'exponential': exponential,
}


def delays(schedule, base, retries, max_total, max_each=None):
    """
    The waits before each retry: at most ``retries`` of them, each at most ``max_each``, their sum never above
    ``max_total`` (the last one is shortened to fit, and nothing follows once the budget is spent).
    """
    total = 0.0
    result = []
    for delay in islice(SCHEDULES[schedule](base), retries):
        if max_each is not None:
            delay = min(delay, max_each)
        delay = min(delay, max_total - total)
        if delay <= 0:
            break
        result.append(round(delay, 6))
        total += delay
    return result
